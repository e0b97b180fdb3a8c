"""The PRM pipeline through the CLI, at toy sizes: `steprl train-prm` (labels first, then DeepSpeed training
and the held-out judgement) and `steprl search` with the PRM it wrote, every method at N = 1 and 2.

One local Ray for the module (tests/e2e/conftest.py): the commands find it up and leave it up.
"""

import json
import math
import os

import pytest
import torch

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


def test_rl_with_an_online_prm_learns_it_and_checkpoints_it(prm_run, tmp_path):
    """steprl train with the PRM just trained as the step reward, learning online from outcomes (2 steps, a
    checkpoint after step 2): every step reports the PRM's loss, and the checkpoint holds the adapted PRM,
    loadable as a reward source and no longer the PRM the run started from."""
    from tasks.prm_formats import PRM_FORMATS
    from tests.e2e.runs import SMALL, rows

    run_dir, prm_dir = str(tmp_path / "rl"), os.path.join(prm_run, "prm")
    online = f"{{name: prm, path: {prm_dir}, online_lr: 1.0e-3, online_batch_size: 8}}"
    sources = f"reward.sources=[{online}, {{name: outcome}}]"
    args = [f"run_dir={run_dir}", sources, "train.steps=2", "train.checkpoint_every=2", "learner.num_ranks=1", *SMALL]
    assert main(["train", CONFIG, *args]) == 0
    steps = [r for r in rows(run_dir) if "prm_online/loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    # up to 16 samples a step (a sample without steps teaches nothing), 8 per update
    n = [int(r["prm_online/samples"]) for r in steps]
    assert all(0 < k <= 16 for k in n) and all(math.isfinite(r["prm_online/loss"]) for r in steps)
    assert [r["prm_online/updates"] for r in steps] == [math.ceil(n[0] / 8), math.ceil(n[0] / 8) + math.ceil(n[1] / 8)]
    adapted = os.path.join(run_dir, "checkpoints", "step_000002", "prm_online")
    assert os.path.isfile(os.path.join(adapted, "optimizer.pt"))
    load = PRM_FORMATS["token_classification"].load
    before, after = (load(d, dtype=torch.float32, device="cpu", trust_remote_code=False) for d in (prm_dir, adapted))
    item = [("3+4-2=\n", ["3+4=7 -2", "7-2=5", "A5"])]
    assert before.score(item) != after.score(item)
