"""Faults with real actors: processes are killed with SIGKILL mid-step, never mocked.

The driver is instrumented only to choose the moment (a wrapper around GeneratorPool.stream sees each
trajectory arrive); the kills hit the real Ray actor processes of a real run.

- A generator replica (of 2) dies while it still owes samples: it is replaced, the replacement loads the
  current weights, its unfinished samples are re-issued, and every (step, prompt, sample) is trained on once.
- The reward, critic and reference actors die mid-step: Ray re-creates them and re-runs their calls; no
  sample is masked for it.
- The same generator death under sync.method=collective: the replacement gets the weights through the
  object store, then takes part in the next broadcast.
- A learner rank dies: the run stops with an error naming the rank, and resume=true finishes the run.
"""

import os
import signal
from collections import Counter

import pytest
import ray

from learner.group import LearnerError
from orchestrator import train as train_mod
from orchestrator.generators import GeneratorPool
from tests.e2e.runs import config, rows

pytestmark = pytest.mark.heavy  # Ray, vLLM or DeepSpeed: left out of `make test-fast`

STEPS, PROMPTS, GROUP = 4, 4, 4


def pid_of(actor) -> int:
    return ray.get(actor.__ray_call__.remote(lambda _self: os.getpid()), timeout=120)


@pytest.fixture
def instrumented(monkeypatch):
    """Records the run's roles; `kills[s]` (roles, pool -> pids) names the processes to kill when the rollout
    of train step s has delivered its first trajectory. Evaluation calls (n != group size) are not counted."""
    state = {"roles": None, "calls": 0, "kills": {}, "killed": []}
    start_roles = train_mod.start_roles

    def recording_start_roles(*args, **kwargs):
        state["roles"] = start_roles(*args, **kwargs)
        return state["roles"]

    stream = GeneratorPool.stream

    def killing_stream(pool, requests, sampling):
        if sampling["n"] != GROUP:
            yield from stream(pool, requests, sampling)
            return
        state["calls"] += 1
        kill = state["kills"].get(state["calls"])
        pids = kill and kill(state["roles"], pool)  # pids are read while the actors are idle
        for k, item in enumerate(stream(pool, requests, sampling)):
            if pids and k == 0:
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                state["killed"] += pids
            yield item

    monkeypatch.setattr(train_mod, "start_roles", recording_start_roles)
    monkeypatch.setattr(GeneratorPool, "stream", killing_stream)
    return state


def test_dead_generator_reward_critic_reference_are_replaced(ray_local, tmp_path, instrumented):
    run_dir = str(tmp_path / "faults")
    # Step 2 loses generator 1; step 3 the reward actor; step 4 the critic and the reference (the critic
    # restores the step-2 checkpoint).
    instrumented["kills"] = {
        2: lambda roles, pool: [pid_of(pool.actors[1])],
        3: lambda roles, pool: [pid_of(roles.rewards[0])],
        4: lambda roles, pool: [pid_of(roles.critic), pid_of(roles.reference)],
    }
    summary = train_mod.run_train(
        config(
            run_dir,
            f"train.steps={STEPS}",
            "train.checkpoint_every=2",
            "rollout.num_generators=2",
            f"rollout.prompts_per_step={PROMPTS}",
            f"rollout.group_size={GROUP}",
            "algo.estimator=step_ppo",
            "algo.kl_coef=0.05",
            "algo.kl_in=reward",
            "eval.k=1",
            "eval.num_problems=4",
        )
    )
    assert len(instrumented["killed"]) == 4

    assert summary["samples_total"] == STEPS * PROMPTS * GROUP
    samples = rows(run_dir, "samples.jsonl")
    keys = Counter((s["step"], s["group_id"], s["sample"]) for s in samples)
    assert len(samples) == STEPS * PROMPTS * GROUP and max(keys.values()) == 1  # none lost, none twice
    assert set(keys) == {(t, g, i) for t in range(1, STEPS + 1) for g in range(PROMPTS) for i in range(GROUP)}
    assert all(s["sample_valid"] for s in samples)  # a restarted scorer re-ran the calls; none masked

    steps = [r for r in rows(run_dir) if r["step"] > 0]
    assert [r["generators/restarts"] for r in steps] == [0, 1, 1, 1]
    assert steps[1]["generators/reissued_samples"] >= 1  # the replica died owing samples
    assert [r["policy_version"] for r in steps] == [1, 2, 3, 4]
    # The replacement loaded version 1 before serving: every step-2 sample was made by version 1.
    assert {s["policy_version"] for s in samples if s["step"] == 2} == {1}
    assert all(r["samples/masked"] == 0 for r in steps)
    with open(os.path.join(run_dir, "logs", "critic.log")) as fh:  # the new critic took up the step-2 state
        assert "critic restarted by Ray: restored" in fh.read()


def test_collective_sync_replaced_generator_gets_the_weights_through_the_object_store(
    ray_local, tmp_path, instrumented
):
    """sync.method=collective: a generator killed mid-rollout is replaced; the replacement loads the current
    version through the object store (the learner exports it on demand), then joins the next broadcast."""
    run_dir = str(tmp_path / "collective")
    instrumented["kills"] = {2: lambda roles, pool: [pid_of(pool.actors[1])]}
    train_mod.run_train(
        config(
            run_dir,
            "train.steps=3",
            "sync.method=collective",
            "rollout.num_generators=2",
            f"rollout.prompts_per_step={PROMPTS}",
            f"rollout.group_size={GROUP}",
            "eval.k=1",
            "eval.num_problems=4",
        )
    )
    steps = [r for r in rows(run_dir) if r["step"] > 0]
    assert [r["generators/restarts"] for r in steps] == [0, 1, 1]
    assert [r["policy_version"] for r in steps] == [1, 2, 3]
    # v1 and v2 are broadcast before steps 2 and 3 (the replacement of step 2 joins the second), v3 before the end
    assert all(r["sync/mismatched_tensors"] == 0 and r["sync/send_s"] > 0 for r in steps[1:])
    samples = rows(run_dir, "samples.jsonl")
    assert {s["policy_version"] for s in samples if s["step"] == 2} == {1}  # the replacement sampled version 1
    assert {s["policy_version"] for s in samples if s["step"] == 3 and s["replica"] == 1} == {2}  # broadcast


def test_dead_learner_rank_stops_the_run_and_resume_finishes_it(ray_local, tmp_path, instrumented):
    run_dir = str(tmp_path / "learner")
    args = ["train.steps=3", "train.checkpoint_every=1", "train.timeout_s=120"]
    instrumented["kills"] = {2: lambda roles, pool: [pid_of(roles.learner.ranks[1])]}  # during step 2
    with pytest.raises(LearnerError, match="learner rank 1"):
        train_mod.run_train(config(run_dir, *args))
    assert [r["step"] for r in rows(run_dir)] == [0, 1]  # step 1 was checkpointed, step 2 never finished

    instrumented["kills"], instrumented["calls"] = {}, 0
    summary = train_mod.run_train(config(run_dir, *args, "resume=true"))
    assert summary["steps"] == 3 and summary["samples_total"] == 3 * 16
    assert [r["step"] for r in rows(run_dir)] == [0, 1, 2, 3]
