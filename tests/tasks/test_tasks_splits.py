"""The three splits: train, validation (for choosing settings) and the held-out test split ("eval" in tasks).

Disjoint on thousands of samples, the test set every document quotes unchanged by the validation split, and a
missing validation split named by the field that makes one.
"""

import hashlib
import itertools
import json
import os

import pytest

from orchestrator.data import EVAL_SET_SEED, eval_problems
from orchestrator.validate import VALIDATION_FIELDS, ConfigError, load_config
from tasks import TASKS
from tasks.arithmetic import ArithmeticTask, make_problem, split_of
from tasks.datasets import DatasetError
from tasks.jsonl import JsonlTask

DEMO = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs", "demo_cpu.yaml"
)


def _digest(problems) -> str:
    return hashlib.sha256("\n".join(p.prompt for p in problems).encode()).hexdigest()[:16]


# Digests of the prompt lists made by the code before the validation split existed (git HEAD 8d72e4a): the
# test set of seed 12345 (200 problems: the default eval.num_problems that docs/results.md quotes; 1000: the
# study's test size) and two train streams of the default task.
TEST_200 = "626824baccf30043"
TEST_1000 = "34236e2d52ee5336"
TRAIN_SEED_7 = "c70d8458f619f6e1"  # ArithmeticTask(seed=0).sample(500, "train", seed=7)
TRAIN_OWN_STREAM = "50e926ffd6dfeda1"  # ArithmeticTask(seed=0).sample(500, "train")


@pytest.mark.parametrize("validation_percent", [0, 10, 30])
def test_the_test_set_is_bit_identical_whatever_the_validation_split(validation_percent):
    task = ArithmeticTask(validation_percent=validation_percent)
    assert _digest(task.sample(200, "eval", seed=EVAL_SET_SEED)) == TEST_200
    assert _digest(task.sample(1000, "eval", seed=EVAL_SET_SEED)) == TEST_1000


def test_without_a_validation_split_train_is_as_before():
    assert _digest(ArithmeticTask(seed=0).sample(500, "train", seed=7)) == TRAIN_SEED_7
    assert _digest(ArithmeticTask(seed=0).sample(500, "train")) == TRAIN_OWN_STREAM


def test_eval_problems_honours_eval_split():
    test_cfg = load_config(DEMO)
    assert test_cfg.eval.split == "test"  # the default: every existing config evaluates where it did
    task = ArithmeticTask()
    assert _digest(eval_problems(test_cfg, task)) == TEST_200
    val_cfg = load_config(DEMO, ["eval.split=validation", "eval.validation_percent=10"])
    val_task = ArithmeticTask(validation_percent=10)
    val = eval_problems(val_cfg, val_task, 1000)
    assert len(val) == 1000 and all(val_task.split_of(p) == "validation" for p in val)
    assert not {p.prompt for p in val} & {p.prompt for p in eval_problems(test_cfg, val_task, 1000)}


def test_train_validation_and_test_never_coincide():
    # Short chains (2-3 operations: 84,000 distinct prompts) so that thousands of draws repeat prompts a lot
    # and any leak between the splits would show.
    tasks = [ArithmeticTask(2, 3, seed=s, validation_percent=10) for s in range(3)]
    drawn = {
        split: {p.prompt for t in tasks for p in t.sample(2000, split, seed=None if split == "train" else 7)}
        for split in ("train", "validation", "eval")
    }
    assert all(len(prompts) > 1000 for prompts in drawn.values())
    for a, b in itertools.combinations(drawn, 2):
        assert not drawn[a] & drawn[b], (a, b)
    for split, prompts in drawn.items():
        assert {split_of(q, 20, 10) for q in prompts} == {split}


def test_split_sizes_over_every_two_operation_chain():
    # All 10*10*10 operand triples x 2*2 operator pairs = 4000 chains: about 20% test, 10% validation, 70% train.
    prompts = [
        make_problem(list(o), list(ops)).prompt
        for o in itertools.product(range(10), repeat=3)
        for ops in itertools.product("+-", repeat=2)
    ]
    counts = {s: sum(split_of(q, 20, 10) == s for q in prompts) / len(prompts) for s in ("eval", "validation", "train")}
    assert 0.17 < counts["eval"] < 0.23 and 0.08 < counts["validation"] < 0.12 and 0.65 < counts["train"] < 0.75
    # validation takes its prompts from train only: the eval prompts are the same with and without it
    assert [q for q in prompts if split_of(q) == "eval"] == [q for q in prompts if split_of(q, 20, 10) == "eval"]


def test_no_validation_split_and_bad_percent_name_the_field():
    with pytest.raises(ValueError, match="validation_percent is 0"):
        ArithmeticTask().sample(3, "validation", seed=1)
    with pytest.raises(ValueError, match="validation_percent must be in"):
        ArithmeticTask(validation_percent=80)
    with pytest.raises(ValueError, match="split must be one of train, eval, validation"):
        ArithmeticTask().sample(3, "test")
    with pytest.raises(ConfigError, match="eval.split=validation: task.kind=arithmetic .* eval.validation_percent"):
        load_config(DEMO, ["eval.split=validation"])
    with pytest.raises(ConfigError, match="eval.validation_path: applies to task.kind=jsonl"):
        load_config(DEMO, ["eval.validation_path=v.jsonl"])


def test_every_task_kind_says_where_its_validation_split_comes_from():
    assert set(VALIDATION_FIELDS) == set(TASKS)


def _jsonl(path, prompts):
    path.write_text("".join(json.dumps({"prompt": p, "answer": "1"}) + "\n" for p in prompts))
    return str(path)


def test_jsonl_validation_file(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", ["t1", "t2", "t3"])
    test = _jsonl(tmp_path / "test.jsonl", ["e1", "e2"])
    val = _jsonl(tmp_path / "val.jsonl", ["v1", "v2", "v3"])
    task = JsonlTask(train, test, skip_bad=False, validation_path=val)
    assert [p.prompt for p in task.sample(2, "validation", seed=0)] == ["v1", "v2"]  # the file's first rows
    assert [p.prompt for p in task.sample(5, "eval")] == ["e1", "e2"]
    assert task.validation_skipped == 0
    with pytest.raises(ValueError, match="set eval.validation_path"):
        JsonlTask(train, test, skip_bad=False).sample(2, "validation")
    leaky = _jsonl(tmp_path / "leaky.jsonl", ["v1", "e2"])
    with pytest.raises(DatasetError, match="leaky.jsonl:2: this validation prompt is also in the train or eval"):
        JsonlTask(train, test, skip_bad=False, validation_path=leaky)
