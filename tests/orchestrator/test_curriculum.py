"""orchestrator.curriculum without Ray: level progression with a fake evaluate, the check schedule, the state a
checkpoint keeps, the tasks of the levels (real ArithmeticTask) and the validation problems a check sees; then
the config's curriculum and the train pipeline's wiring (the task is read when a step is generated)."""

import os
from typing import Any

import pytest

from orchestrator.curriculum import Curriculum, curriculum_from_config
from orchestrator.validate import load_config
from tasks.arithmetic import ArithmeticTask

DEMO = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs", "demo_cpu.yaml"
)
LEVELS = [3, 5, 7]


def make_task(max_steps: int) -> ArithmeticTask:
    return ArithmeticTask(min_steps=2, max_steps=max_steps, validation_percent=10)


def curriculum(levels=LEVELS, threshold=0.6, every=10, num_problems=20) -> Curriculum:
    return Curriculum(levels, threshold, every, num_problems, make_task)


class FakeEvaluate:
    """Returns the given pass rates in turn, and keeps the problems it was asked about."""

    def __init__(self, *rates: float):
        self.rates: list[float] = list(rates)
        self.seen: list[list] = []

    def __call__(self, problems: list) -> dict:
        self.seen.append(problems)
        return {"eval/accuracy": self.rates.pop(0), "timing/eval_s": 0.5}


def test_levels_advance_at_the_threshold():
    c = curriculum()
    assert (c.level, c.metrics()) == (0, {"curriculum/level": 0, "curriculum/max_steps": 3})
    evaluate = FakeEvaluate(0.2, 0.59, 0.6, 0.1, 0.9)
    assert c.check(evaluate) == {"curriculum/pass_rate": 0.2, "timing/curriculum_s": 0.5}
    assert c.level == 0
    c.check(evaluate)  # 0.59: just below
    assert c.level == 0
    c.check(evaluate)  # 0.6: at the threshold moves on
    assert c.metrics() == {"curriculum/level": 1, "curriculum/max_steps": 5}
    c.check(evaluate)
    assert c.level == 1
    c.check(evaluate)
    assert (c.level, c.task().max_steps) == (2, 7)


def test_no_advance_at_the_last_level():
    c = curriculum(levels=[3, 5])
    assert c.advance(1.0) and c.level == 1
    assert not c.advance(1.0) and c.level == 1
    single = curriculum(levels=[4])
    assert not single.advance(1.0) and single.level == 0 and not single.due(10)


def test_due_every_n_steps_until_the_last_level():
    c = curriculum(every=3)
    assert [s for s in range(1, 13) if c.due(s)] == [3, 6, 9, 12]
    c.advance(1.0)
    assert [s for s in range(1, 13) if c.due(s)] == [3, 6, 9, 12]
    c.advance(1.0)  # last level: nothing left to decide
    assert not any(c.due(s) for s in range(1, 13))


def test_off_without_levels():
    default = make_task(5)
    c = Curriculum([], 0.6, 10, 20, make_task, default_task=default)
    assert not c.on and c.task() is default and c.metrics() == {}
    assert not any(c.due(s) for s in range(1, 31))
    c.load({"step": 4})  # an old state without the key
    assert c.state() == {"curriculum_level": 0}


def test_state_round_trip():
    c = curriculum()
    c.advance(0.9)
    state = {"step": 20, **c.state()}
    assert state["curriculum_level"] == 1
    resumed = curriculum()
    resumed.load(state)
    assert (resumed.level, resumed.task().max_steps) == (1, 5)
    resumed.load({"step": 0})  # no key: the start
    assert resumed.level == 0
    with pytest.raises(ValueError, match="task.curriculum.levels: the checkpoint is at curriculum level 3"):
        curriculum().load({"curriculum_level": 3})


def test_each_level_draws_chains_of_at_most_its_length():
    c = curriculum()
    for i, max_steps in enumerate(LEVELS):
        assert c.level == i
        problems = c.task().sample(300, "train", seed=i)
        lengths = {p.num_ops for p in problems}
        assert max(lengths) == max_steps and min(lengths) == 2  # min_steps as configured
        c.advance(1.0)


def test_validation_problems_are_fixed_per_level_and_from_the_validation_split():
    c = curriculum(num_problems=30)
    evaluate = FakeEvaluate(0.1, 0.1, 0.9, 0.1)
    c.check(evaluate)
    c.check(evaluate)
    first, again = evaluate.seen[0], evaluate.seen[1]
    assert len(first) == 30 and [p.prompt for p in first] == [p.prompt for p in again]  # same problems per level
    c.check(evaluate)  # advances to level 1
    c.check(evaluate)
    level1 = evaluate.seen[3]
    assert [p.prompt for p in level1] != [p.prompt for p in first]
    for problems, max_steps in ((first, 3), (level1, 5)):
        assert all(make_task(max_steps).split_of(p) == "validation" for p in problems)
        assert max(p.num_ops for p in problems) <= max_steps


def test_curriculum_from_config():
    on = ["task.curriculum.levels=[2,3]", "task.curriculum.every=4", "eval.validation_percent=10"]
    cfg = load_config(DEMO, on)
    c = curriculum_from_config(cfg, task=None)
    assert (c.levels, c.every, c.threshold, c.num_problems) == ([2, 3], 4, 0.6, 100)
    task = c.task()
    assert (task.max_steps, task.min_steps, task.modulus, task.validation_percent) == (2, 2, 10, 10)
    assert [p.num_ops for p in c.validation_problems()] and c.validation_problems()[0].num_ops <= 2
    off = curriculum_from_config(load_config(DEMO), task="configured")
    assert not off.on and off.task() == "configured"


def test_pipeline_reads_the_task_when_a_step_is_generated(monkeypatch):
    import orchestrator.train as train

    seen = []
    monkeypatch.setattr(train, "step_rollout", lambda cfg, roles, task, step: seen.append((step, task.max_steps)))
    c = curriculum()
    nothing: Any = None  # make_pipeline needs no config or roles until it generates or syncs
    pipeline = train.make_pipeline(nothing, nothing, None, max_staleness=0, generator_version=0, task_of=c.task)
    try:
        pipeline.rollout_of(1)
        c.advance(1.0)
        pipeline.rollout_of(2)
    finally:
        pipeline.close()
    assert seen == [(1, 3), (2, 5)]
