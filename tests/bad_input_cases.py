"""The machinery of tests/test_bad_input.py: a bad-input case, the check of what
it raised, and child processes for the cases that can crash the interpreter.

A case is a call that must fail cleanly: with one of the expected exception
types and a message matching every regex (the offending argument's name, both
devices for a device mismatch). Never IndexError, SystemError or
NotImplementedError, which are torch's internals showing through.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
FORBIDDEN = ("IndexError", "SystemError", "NotImplementedError")
# A child process prints what it reports (a case's start, its outcome) as JSON lines after this mark.
RESULT_MARK = "BAD_INPUT_RESULT "
CHILD_TIMEOUT_S = 60


@dataclass(frozen=True)
class Case:
    id: str
    call: Callable[[], object]
    raises: tuple  # exception types, any of which is right
    match: tuple = ()  # regexes the message must all match
    may_succeed: bool = False  # returning is fine too: the call then checks its own result


def bad(id, call, raises, *match, may_succeed=False) -> Case:
    return Case(id, call, raises if isinstance(raises, tuple) else (raises,), match, may_succeed)


def case(id, call, raises, *match, may_succeed=False, marks=()):
    """A pytest.param holding a Case, with its id."""
    return pytest.param(bad(id, call, raises, *match, may_succeed=may_succeed), id=id, marks=marks)


def arg(name: str) -> str:
    """Regex: the message names this argument (as a whole word)."""
    return rf"(?<![\w.]){re.escape(name)}(?!\w)"


def not_naming(name: str) -> str:
    """Regex: the message does not name this (it blames something else)."""
    return rf"(?s)^(?!.*{arg(name)})"


def key(name: str) -> str:
    """Regex: the message names this state-dict key or field, not a longer one
    it begins or ends ('weight' is not 'weight.absmax', 'blocksize' not 'nested_blocksize')."""
    return rf"(?<![\w.]){re.escape(name)}(?![\w.])"


# A device mismatch names both devices.
META_AND_CPU = (r"\bmeta\b", r"\bcpu\b")
# A size too large to allocate or count: say so, whatever the words.
OVERFLOW = r"(?i)overflow|too (large|big|many)|exceed|more\b.*\bthan|\bint64\b|can't allocate|out of memory|2\^6[34]"
# out= sharing memory with an input.
OVERLAP = r"(?i)overlap|shares?\b|alias|same memory|memory location"


def outcome_of(call) -> dict:
    """What a call did, as plain data (so a child process can print it)."""
    try:
        call()
    except Exception as exc:  # noqa: BLE001  (every exception is an outcome to judge)
        return {"raised": [c.__name__ for c in type(exc).__mro__], "message": str(exc)}
    return {"raised": None}


def check_outcome(case: Case, outcome: dict) -> None:
    raised = outcome["raised"]
    if raised is None:
        if not case.may_succeed:
            pytest.fail(f"{case.id}: no error; expected {' or '.join(t.__name__ for t in case.raises)}")
        return
    got = f"{raised[0]}: {outcome['message']}"
    assert not set(raised) & set(FORBIDDEN), f"{case.id}: torch internals showing through: {got}"
    assert any(t.__name__ in raised for t in case.raises), (
        f"{case.id}: expected {' or '.join(t.__name__ for t in case.raises)}, got {got}")
    for pattern in case.match:
        assert re.search(pattern, outcome["message"]), f"{case.id}: message does not match {pattern!r}: {got}"


def expect(case: Case) -> None:
    """Run a case in this process."""
    check_outcome(case, outcome_of(case.call))


# ----------------------------------------------------------------------------- child processes
def died(returncode: int) -> str:
    return f"died of {signal.Signals(-returncode).name}" if returncode < 0 else f"exited with {returncode}"


def run_child(code: str, env: dict | None = None, timeout: float = CHILD_TIMEOUT_S) -> list[dict]:
    """Run `code` in a fresh interpreter (LORAOPS_CPU_BUFFER_CACHE_MB unset
    unless `env` sets it); returns the JSON objects it printed after RESULT_MARK,
    plus a last {"died": how, "stderr": tail} when it crashed or timed out."""
    child_env = {k: v for k, v in os.environ.items() if k != "LORAOPS_CPU_BUFFER_CACHE_MB"}
    child_env.update(env or {})
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env,
                              cwd=TESTS_DIR, timeout=timeout)
        stdout, stderr, how = proc.stdout, proc.stderr, died(proc.returncode) if proc.returncode else None
    except subprocess.TimeoutExpired as exc:
        decode = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or "")  # noqa: E731
        stdout, stderr, how = decode(exc.stdout), decode(exc.stderr), f"did not finish in {timeout} s"
    records = [json.loads(line[len(RESULT_MARK):]) for line in stdout.splitlines() if line.startswith(RESULT_MARK)]
    if how is not None:
        records.append({"died": f"the child process {how}", "stderr": stderr[-3000:] or "(nothing)"})
    return records


def child_outcome(code: str, what: str, env: dict | None = None) -> dict:
    """The one outcome a child prints; a crash fails the calling test."""
    records = run_child(code, env)
    if not records or "died" in records[-1]:
        pytest.fail(f"{what}: {records[-1]['died']}; stderr ends:\n{records[-1]['stderr']}" if records else
                    f"{what}: the child process printed no outcome")
    return records[-1]


def run_isolated(cases: list[Case], module: str, table: str) -> dict[str, dict]:
    """The outcomes of cases run in child processes, one after another in one
    process, each announced before it runs (the child finds them by id in
    `module`.`table`). When the process dies in a case, that case runs again
    alone, its outcome is that run's (a crash: {"died": ..., "stderr": ...}),
    and the rest continue in a new process."""
    outcomes: dict[str, dict] = {}
    pending = [c.id for c in cases]
    while pending:
        code = (f"import sys; sys.path.insert(0, {TESTS_DIR!r}); import bad_input_cases as b, {module} as m; "
                f"b.child_main(getattr(m, {table!r}), {pending!r})")
        records = run_child(code, timeout=CHILD_TIMEOUT_S + 5 * len(pending))
        started = None
        for record in records:
            if "died" in record:
                if len(pending) == 1:  # alone: a crash, even after the outcome (at exit), is the outcome
                    outcomes[pending[0]] = record
                else:  # maybe an earlier case's damage: run the case it died in (or after) alone
                    culprit = started or pending[0]
                    outcomes.pop(culprit, None)
                    outcomes.update(run_isolated([c for c in cases if c.id == culprit], module, table))
            elif "outcome" in record:
                outcomes[record["id"]] = record["outcome"]
            else:
                started = record["id"]
        pending = [i for i in pending if i not in outcomes]
    return outcomes


def child_main(table, case_ids: list[str]) -> None:
    """The child's side of run_isolated: two threads (as the crash reports had)."""
    import torch

    torch.set_num_threads(2)
    by_id = {p.values[0].id: p.values[0] for p in table}
    for case_id in case_ids:
        print(RESULT_MARK + json.dumps({"id": case_id}), flush=True)
        torch.manual_seed(0)
        outcome = outcome_of(by_id[case_id].call)
        print(RESULT_MARK + json.dumps({"id": case_id, "outcome": outcome}), flush=True)


def check_isolated(case: Case, outcome: dict) -> None:
    if "died" in outcome:
        pytest.fail(f"{case.id}: {outcome['died']}; stderr ends:\n{outcome['stderr']}")
    check_outcome(case, outcome)
