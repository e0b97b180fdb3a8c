"""The PRM pipeline through the CLI, at toy sizes: `steprl train-prm` (labels first, then DeepSpeed training
and the held-out judgement) and `steprl search` with the PRM it wrote, every method at N = 1 and 2.

One local Ray for the module (tests/e2e/conftest.py): the commands find it up and leave it up.
"""

import json
import math
import os

import pytest

from orchestrator.cli import main
from orchestrator.config import SEARCH_METHODS
from orchestrator.searching import budgets_of
from tests.e2e.runs import ROOT

pytestmark = pytest.mark.heavy  # Ray, vLLM or DeepSpeed: left out of `make test-fast`

CONFIG = os.path.join(ROOT, "configs", "prm_cpu.yaml")
KINDS = ["mc_soft", "oracle", "corrupt"]
TINY = [
    "label.num_problems=6",
    "label.samples_per_problem=2",
    "label.rollouts=2",
    "label.heldout_problems=6",
    f"label.kinds=[{','.join(KINDS)}]",
    "prm.epochs=1",
    "prm.batch_size=4",
    "cluster.num_cpus=2",
]
BUDGETS = [1, 2]


def summary(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "summary.json")) as fh:
        return json.load(fh)


def jsonl(path: str) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh]


def number_or_null(x) -> bool:
    """A metric of the summary: a finite number, or null where it is NaN (e.g. one class only)."""
    return x is None or (isinstance(x, (int, float)) and math.isfinite(x))


@pytest.fixture(scope="module")
def prm_run(ray_local, tmp_path_factory) -> str:
    run_dir = str(tmp_path_factory.mktemp("prm_run"))
    assert main(["train-prm", CONFIG, f"run_dir={run_dir}", *TINY]) == 0
    return run_dir


def test_train_prm_writes_labels_prm_and_judgement(prm_run):
    prm_dir = os.path.join(prm_run, "prm")
    for name in ("config.json", "model.safetensors"):
        assert os.path.isfile(os.path.join(prm_dir, name)), name
    s = summary(prm_run)
    assert s["prm/dir"] == os.path.abspath(prm_dir)
    assert s["prm/train_file"] == os.path.abspath(os.path.join(prm_run, "labels", "mc_soft.jsonl"))  # kinds[0]
    assert "prm/step_auc" in s and "prm/first_error_f1" in s
    assert number_or_null(s["prm/step_auc"]) and number_or_null(s["prm/first_error_f1"])
    for key in ("prm/step_auc", "prm/first_error_f1"):
        assert s[key] is None or 0.0 <= s[key] <= 1.0, key
    assert s["prm/heldout_steps"] > 0
    # the label files: every kind, and the held-out one, rows of steps with one label in [0, 1] each
    for kind in [*KINDS, "heldout"]:
        path = os.path.join(prm_run, "labels", f"{kind}.jsonl")
        assert s[f"label/{kind}/file"] == os.path.abspath(path)
        rows = jsonl(path)
        assert rows, kind
        for row in rows:
            assert row["steps"] and len(row["labels"]) == len(row["steps"]), (kind, row)
            assert all(0.0 <= y <= 1.0 for y in row["labels"]), (kind, row)
    assert len(jsonl(os.path.join(prm_run, "labels", "corrupt.jsonl"))) == 6 * 2  # gold solutions, half corrupted
    # the oracle kind against its own meaning (the config's label.meaning: step_correct)
    assert s["label/oracle/auc_step_correct"] in (1.0, None)  # None: every sampled step had one class
    assert s["label/oracle/first_error_agreement"] == 1.0
    assert s["label/mc_soft/rollouts_per_step"] > 0 and s["label/oracle/rollouts_per_step"] == 0


def test_search_with_the_trained_prm(prm_run, tmp_path):
    run_dir = str(tmp_path / "search")
    args = [f"prm={prm_run}/prm", f"run_dir={run_dir}", "search.num_problems=4", "search.budgets=[1,2]"]
    assert main(["search", CONFIG, *args, "cluster.num_cpus=2"]) == 0
    s = summary(run_dir)
    assert s["search/problems"] == 4
    assert s["search/prm"] == os.path.abspath(os.path.join(prm_run, "prm"))
    keys = {k for k in s if k.startswith("search/") and "@" in k}
    want = set()
    for method in SEARCH_METHODS:
        for n in budgets_of(method, BUDGETS):
            acc, tokens = s[f"search/{method}@{n}"], s[f"search/{method}@{n}/tokens"]
            assert 0.0 <= acc <= 1.0, (method, n, acc)
            assert tokens > 0, (method, n, tokens)
            want |= {f"search/{method}@{n}", f"search/{method}@{n}/tokens"}
    assert keys == want  # greedy at N = 1 only, every other method at 1 and 2, nothing else
    assert "search/greedy@2" not in s
