"""orchestrator.pipeline.Pipeline with a fake generator: which weights make which batch, when weights are
published, and that generation of the next batch really runs while the learner trains (no timing involved)."""

import threading

import pytest

from algo.trajectory import Trajectory
from orchestrator.pipeline import Pipeline, Staged
from orchestrator.rollout import Rollout


class FakeWorld:
    """Generators holding a version; a rollout's samples carry the version that made them."""

    def __init__(self, before_rollout=None, overlaps_training=True):
        self.generator_version, self.events, self.overlaps = 0, [], overlaps_training
        self.before_rollout = before_rollout or (lambda step: None)

    def rollout_of(self, step: int) -> Rollout:
        self.before_rollout(step)
        self.events.append(("generate", step, self.generator_version))
        t = Trajectory(f"s{step}", "p", 0, self.generator_version, [1], [2], [-1.0], "stop", [(0, 1)])
        return Rollout([t], None, None)

    def stage(self, version: int) -> Staged:
        """The learner's half now; the generators load `version` when finish() runs."""
        self.events.append(("stage", version, threading.current_thread().name))

        def finish() -> dict:
            self.events.append(("publish", version, threading.current_thread().name))
            self.generator_version = version
            return {"sync/load_s": 0.0}

        return Staged(finish, self.overlaps)

    def of(self, kind: str) -> list:
        return [e[:2] for e in self.events if e[0] == kind]


def run(k: int, steps: int, barriers=(), world=None, train=lambda step: None):
    """The train loop's use of the pipeline; returns the world and each step's (made-by version, lag)."""
    world = world or FakeWorld()
    pipeline, version, seen = Pipeline(k, world.rollout_of, world.stage, 0), 0, []
    try:
        for step in range(1, steps + 1):
            rollout, m = pipeline.next(step, version, prefetch=step < steps and step not in barriers)
            seen.append((rollout.trajectories[0].policy_version, m["async/staleness_max"]))
            train(step)
            version += 1
    finally:
        pipeline.close()
    return world, seen


def test_synchronous_makes_every_batch_with_the_newest_weights():
    world, seen = run(k=0, steps=3)
    assert seen == [(0, 0), (1, 0), (2, 0)]
    # publish v(s-1) right before generating step s: one sync per step after the first
    assert [e[:3] for e in world.events if e[0] != "stage"] == [
        ("generate", 1, 0),
        ("publish", 1, "MainThread"),
        ("generate", 2, 1),
        ("publish", 2, "MainThread"),
        ("generate", 3, 2),
    ]


def test_one_step_ahead_lags_by_one_version():
    # step 1 trains on v0's batch while v0 also makes batch 2; batch 2 is trained by v1 (lag 1); then v1 is
    # published (generators idle) before batch 3 starts, so batch 3 (made by v1) is trained by v2: lag 1 again.
    world, seen = run(k=1, steps=4)
    assert seen == [(0, 0), (0, 1), (1, 1), (2, 1)]
    assert world.of("publish") == [("publish", 1), ("publish", 2)]  # before batches 3 and 4; none after the last
    # the learner stages v1 in its own thread; the generators load it in the rollout thread, right before batch 3
    stage, load = (next(e for e in world.events if e[:2] == (kind, 1)) for kind in ("stage", "publish"))
    assert stage[2] == "MainThread" and load[2].startswith("steprl-rollout")
    assert world.events.index(load) == world.events.index(("generate", 3, 1)) - 1


def test_two_steps_ahead_syncs_every_other_step_and_never_lags_more_than_two():
    world, seen = run(k=2, steps=6)
    assert seen == [(0, 0), (0, 1), (0, 2), (2, 1), (2, 2), (4, 1)]
    assert world.of("publish") == [("publish", 2), ("publish", 4)]


def test_a_barrier_prefetches_nothing_so_the_next_batch_is_made_by_the_newest_weights():
    # The batch after a checkpoint (or an evaluation) is made as a resumed run would make it: with the newest
    # weights, whatever k is.
    world, seen = run(k=1, steps=4, barriers=(2,))
    assert seen == [(0, 0), (0, 1), (2, 0), (2, 1)]


def test_catch_up_waits_for_the_batch_in_flight_then_publishes():
    world = FakeWorld()
    pipeline = Pipeline(1, world.rollout_of, world.stage, 0)
    pipeline.next(1, 0, prefetch=True)  # batch 2 is being made by v0
    assert pipeline.catch_up(1)["sync/load_s"] == 0.0
    assert [e[:2] for e in world.events] == [("generate", 1), ("generate", 2), ("stage", 1), ("publish", 1)]
    assert pipeline.catch_up(1) == {}  # already there: nothing sent
    pipeline.close()


def test_generation_of_the_next_batch_runs_while_the_learner_trains():
    # Batch 2 cannot finish until step 1's training has started; a synchronous pipeline would time out here.
    learner_busy = threading.Event()

    def before(step):
        if step == 2 and not learner_busy.wait(timeout=30):
            raise RuntimeError("batch 2 was not generated while step 1 trained")

    run(k=1, steps=2, world=FakeWorld(before), train=lambda step: learner_busy.set())


def test_a_sample_older_than_k_versions_is_an_error_not_trained_on():
    world = FakeWorld()
    pipeline = Pipeline(0, world.rollout_of, lambda v: Staged(dict, True), 0)  # a sync that reaches no generator
    pipeline.next(1, 0, prefetch=False)
    with pytest.raises(RuntimeError, match="lags the learner by 1 versions > k=0"):
        pipeline.next(2, 1, prefetch=False)
    pipeline.close()


def test_an_error_while_prefetching_surfaces_at_the_next_step():
    def before(step):
        if step == 2:
            raise ValueError("generator 0 died for good")

    world = FakeWorld(before)
    pipeline = Pipeline(1, world.rollout_of, world.stage, 0)
    pipeline.next(1, 0, prefetch=True)
    with pytest.raises(ValueError, match="died for good"):
        pipeline.next(2, 1, prefetch=False)
    pipeline.close()


def test_a_sync_that_cannot_overlap_training_loads_before_the_next_batch_starts():
    # sync.method=collective: the broadcast needs the learner, so it runs in the main thread before the learner
    # trains again; the schedule of versions is the same.
    world, seen = run(k=1, steps=4, world=FakeWorld(overlaps_training=False))
    assert seen == [(0, 0), (0, 1), (1, 1), (2, 1)]
    assert [e[2] for e in world.events if e[0] == "publish"] == ["MainThread", "MainThread"]
