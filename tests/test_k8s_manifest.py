"""examples/k8s: the PyTorchJob manifests match the schema written from the
kubeflow.org/v1 CRD and the training operator's admission rules, and launch
examples/finetune/finetune.py with flags its parser accepts."""

import copy
import importlib.util
import json
from pathlib import Path

import pytest

from conftest import require_peer

yaml = require_peer("yaml")
jsonschema = require_peer("jsonschema")

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "examples" / "k8s"
SCRIPT = "examples/finetune/finetune.py"
# Each manifest: the accelerator its pods request and the --device it passes.
ACCELERATOR = {
    "pytorchjob.yaml": ("nvidia.com/gpu", "cuda"),
    "pytorchjob-ascend.yaml": ("huawei.com/Ascend910", "npu"),
}


@pytest.fixture(scope="module")
def validator():
    schema = json.loads((K8S / "pytorchjob.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="module")
def finetune():
    spec = importlib.util.spec_from_file_location("finetune_example", ROOT / SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def documents(name):
    with open(K8S / name) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def pytorch_container(replica):
    return next(c for c in replica["template"]["spec"]["containers"] if c["name"] == "pytorch")


def test_every_manifest_is_covered():
    assert sorted(p.name for p in K8S.glob("*.yaml")) == sorted(ACCELERATOR)


@pytest.mark.parametrize("name", sorted(ACCELERATOR))
def test_manifest_matches_schema(name, validator):
    docs = documents(name)
    assert docs
    for doc in docs:
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
        assert not errors, "\n".join(errors)


@pytest.mark.parametrize("name", sorted(ACCELERATOR))
def test_manifest_launches_the_finetune_example(name, finetune):
    resource, device = ACCELERATOR[name]
    for doc in documents(name):
        replicas = doc["spec"]["pytorchReplicaSpecs"]
        # The operator's WORLD_SIZE: one process per pod, as no nprocPerNode is set.
        assert "nprocPerNode" not in doc["spec"]
        world = sum(r.get("replicas", 1) for r in replicas.values())
        assert world >= 2
        for rtype, replica in replicas.items():
            container = pytorch_container(replica)
            argv = container["command"] + container.get("args", [])
            assert argv[0] in ("python", "python3"), (rtype, argv)
            assert argv[1].endswith(SCRIPT), (rtype, argv)
            try:
                args = finetune.parse_args(argv[2:])
            except SystemExit:
                pytest.fail(f"{name} {rtype}: finetune.py rejects {argv[2:]}")
            assert args.device == device
            assert args.parallel in ("ddp", "fsdp")
            assert args.batch_size % world == 0, "the script needs --batch-size a multiple of the processes"
            mounts = [m["mountPath"] for m in container["volumeMounts"]]
            for path in (args.model, args.dataset, args.output):
                assert any(path.startswith(m.rstrip("/") + "/") for m in mounts), (path, mounts)
            volumes = {v["name"] for v in replica["template"]["spec"]["volumes"]}
            assert {m["name"] for m in container["volumeMounts"]} <= volumes
            limits = container["resources"]["limits"]
            assert limits.get(resource) == 1, limits
            others = set(ACCELERATOR.values()) - {(resource, device)}
            assert not any(r in limits for r, _ in others), limits


def _rename_container(doc):
    pytorch_container(doc["spec"]["pytorchReplicaSpecs"]["Worker"])["name"] = "trainer"


def _bad_restart_policy(doc):
    doc["spec"]["pytorchReplicaSpecs"]["Worker"]["restartPolicy"] = "Sometimes"


def _unknown_replica_type(doc):
    doc["spec"]["pytorchReplicaSpecs"]["Chief"] = copy.deepcopy(doc["spec"]["pytorchReplicaSpecs"]["Worker"])


def _replicas_as_string(doc):
    doc["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = "1"


def _two_masters(doc):
    doc["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = 2


def _no_image(doc):
    del pytorch_container(doc["spec"]["pytorchReplicaSpecs"]["Master"])["image"]


def _bad_quantity(doc):
    pytorch_container(doc["spec"]["pytorchReplicaSpecs"]["Master"])["resources"]["limits"]["nvidia.com/gpu"] = "one"


def _name_not_dns1035(doc):
    doc["metadata"]["name"] = "1-loraops"


def _misspelt_field(doc):
    container = pytorch_container(doc["spec"]["pytorchReplicaSpecs"]["Master"])
    container["comand"] = container.pop("command")


# Edits of a valid manifest, each with the path where the schema must report it.
REFUSED = [
    (_rename_container, ("spec", "pytorchReplicaSpecs", "Worker", "template", "spec", "containers")),
    (_bad_restart_policy, ("spec", "pytorchReplicaSpecs", "Worker", "restartPolicy")),
    (_unknown_replica_type, ("spec", "pytorchReplicaSpecs")),
    (_replicas_as_string, ("spec", "pytorchReplicaSpecs", "Worker", "replicas")),
    (_two_masters, ("spec", "pytorchReplicaSpecs", "Master", "replicas")),
    (_no_image, ("spec", "pytorchReplicaSpecs", "Master", "template", "spec", "containers", 0)),
    (_bad_quantity, ("spec", "pytorchReplicaSpecs", "Master", "template", "spec", "containers", 0, "resources",
                     "limits", "nvidia.com/gpu")),
    (_name_not_dns1035, ("metadata", "name")),
    (_misspelt_field, ("spec", "pytorchReplicaSpecs", "Master", "template", "spec", "containers", 0)),
]


@pytest.mark.parametrize("mutate, where", [pytest.param(m, w, id=m.__name__.strip("_")) for m, w in REFUSED])
def test_schema_refuses(mutate, where, validator):
    doc = documents("pytorchjob.yaml")[0]
    # The YAML alias makes Master and Worker share one template: copy before editing one.
    doc = json.loads(json.dumps(doc))
    mutate(doc)
    paths = [tuple(e.absolute_path) for e in validator.iter_errors(doc)]
    assert where in paths, paths
