"""Behaviours of the Atlas A2 API the Ascend emulation reproduces as the 2201
implementation in CANN's headers does them: what DataCopyPad leaves in a UB
block's padding, the scratch ReduceMax needs, DMA atomic add on DataCopy to GM;
the count forms of Exp, Ln and ReduceSum and their operand checks.

Needs a build with LORAOPS_ASCEND_SIM=ON; elsewhere these tests skip, unless
LORAOPS_REQUIRE_ASCEND_SIM=1 makes that an error."""

import os

import pytest
import torch

import loraops

if "ascend_sim" not in loraops.build_info()["backends"]:
    if os.environ.get("LORAOPS_REQUIRE_ASCEND_SIM") == "1":
        raise RuntimeError("this loraops build has no Ascend emulation: build with -C cmake.define.LORAOPS_ASCEND_SIM=ON")
    pytest.skip("loraops was built without LORAOPS_ASCEND_SIM", allow_module_level=True)


def probe(src, is_pad=False, right_padding=0, reduce_count=0, tmp_elems=0, cal_index=False):
    return torch.ops.loraops._ascend_sim_vector_probe(src, is_pad, right_padding, reduce_count, tmp_elems, cal_index)


@pytest.mark.parametrize("is_pad", [False, True])
def test_data_copy_pad_without_pads_repeats_the_first_element_whatever_is_pad_says(is_pad):
    # isPad only loads the pad-value register; with no pads requested the copy fills the block with element 0.
    block = probe(torch.tensor([5.0, 6.0, 7.5] + [0.0] * 5), is_pad=is_pad)[:8]
    assert block.tolist() == [5.0, 6.0, 7.5, 5.0, 5.0, 5.0, 5.0, 5.0]


def test_data_copy_pad_fills_requested_pads_with_the_padding_value():
    block = probe(torch.tensor([5.0, 6.0, 7.5] + [0.0] * 5), is_pad=True, right_padding=5)[:8]
    assert block.tolist() == [5.0, 6.0, 7.5, 7.0, 7.0, 7.0, 7.0, 7.0]


def test_set_atomic_add_makes_data_copy_to_gm_accumulate():
    out = torch.ops.loraops._ascend_sim_vector_probe(torch.tensor([5.0, 6.0, 7.5] + [0.0] * 5), False, 0, 0, 0, False,
                                                     True)
    assert out[:8].tolist() == [6.0, 7.0, 8.5, 6.0, 6.0, 6.0, 6.0, 6.0]


def scratch_needed(count, cal_index, per_repeat=64, per_block=8):
    """ReduceMax's scratch in floats, as the 2201 count form uses it (written out independently of the sim)."""
    repeats = -(-count // per_repeat)
    if not cal_index:
        return 2 * repeats
    if repeats == 1:
        return 1  # the API still needs a tensor
    up = lambda x: -(-x // per_block) * per_block
    second_at, second = up(2 * repeats), 2 * -(-2 * repeats // per_repeat)
    if second == 2:
        return second_at + 2
    third_at = up(second_at + second)
    return third_at + 2 if second <= per_repeat else up(third_at + 2 * -(-second // per_repeat)) + 2


@pytest.mark.parametrize("count", [8, 64, 256, 2048, 4160])
@pytest.mark.parametrize("cal_index", [False, True])
def test_reduce_max_needs_its_scratch(count, cal_index):
    src = torch.randn(count)
    need = scratch_needed(count, cal_index)
    out = probe(src, reduce_count=count, tmp_elems=need, cal_index=cal_index)
    assert out[8].item() == src.max().item()
    if cal_index:
        assert out[9:10].view(torch.int32).item() == src.argmax().item()
    with pytest.raises(RuntimeError, match=rf"ReduceMax: sharedTmpBuffer holds {need - 1} elements; {count} elements"
                                           rf"{' with calIndex' if cal_index else ''} need {need}"):
        probe(src, reduce_count=count, tmp_elems=need - 1, cal_index=cal_index)


def math_probe(src, op, op_count=None, ub_offset=0):
    op_count = src.numel() - ub_offset if op_count is None else op_count
    return torch.ops.loraops._ascend_sim_vector_math_probe(src, op, op_count, ub_offset)


@pytest.mark.parametrize("count", [1, 8, 100, 4096])
def test_exp_and_ln_are_the_float_functions(count):
    src = torch.randn(count) * 4
    torch.testing.assert_close(math_probe(src, 0), src.exp(), rtol=2e-7, atol=0)
    torch.testing.assert_close(math_probe(src.abs() + 1e-3, 1), (src.abs() + 1e-3).log(), rtol=2e-7, atol=2e-7)
    assert math_probe(torch.tensor([-3.4e38, 0.0]), 0).tolist() == [0.0, 1.0]  # a masked score exponentiates to 0


@pytest.mark.parametrize("count", [1, 7, 64, 1000])
def test_reduce_sum_adds_in_order(count):
    src = torch.randn(count)
    total = torch.zeros((), dtype=torch.float32)
    for x in src:
        total = total + x
    assert math_probe(src, 2)[0].item() == total.item()


@pytest.mark.parametrize("op, name", [(0, "Exp"), (1, "Ln"), (2, "ReduceSum")])
def test_unary_and_reduce_sum_faults(op, name):
    src = torch.rand(64) + 0.5
    # An operand one float into a 32-byte block: UB operands must be 32-byte aligned.
    with pytest.raises(RuntimeError, match=rf"{name}: UB address offset \d+ is not 32-byte aligned"):
        math_probe(src, op, op_count=8, ub_offset=1)
    # More elements than the tensor holds.
    with pytest.raises(RuntimeError, match=rf"{name}: 72 elements exceed the local tensor's 64"):
        math_probe(src, op, op_count=72)


def test_reduce_sum_count_must_be_positive():
    # The 2201 count form checks count in [1, UB bytes / sizeof(T)].
    with pytest.raises(RuntimeError, match=r"ReduceSum: count 0 is outside \[1, 49152\]"):
        math_probe(torch.ones(8), 2, op_count=0)
