"""One RL train step: each line of train_step is one arrow of the dataflow.

prompts -> generate (streamed) -> reward / critic / reference scoring -> advantages -> learner update
        -> publish weights (version + 1) -> generators load them, per-tensor hashes compared
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from algo import registry
from algo.batch import add_response_values, batch_advantages, collate, correct_response_mask
from algo.trajectory import PromptRequest
from orchestrator.config import SYNC_METHODS
from orchestrator.generators import Published
from orchestrator.metrics import rollout_stats
from orchestrator.rollout import stream_rollouts
from orchestrator.runtime import ray_get


@dataclass(frozen=True)
class StepSettings:
    """Plain values the step needs, read once from the config."""

    sampling: dict  # n, temperature, top_p, max_tokens, seed (the step's; samples derive theirs)
    estimator: str
    estimator_params: dict  # the algo.* fields the estimator takes (algo.registry.ESTIMATORS)
    whiten: bool
    kl_coef: float
    kl_estimator: str
    kl_in: str  # "loss" | "reward"
    sft_coef: float
    train_policy: bool  # False during critic warm-up
    pad_id: int
    timeout_s: float
    sync_method: str  # sync.method
    reward_batch: int = 1  # reward.batch_size: trajectories per call to a reward replica


def train_step(roles, s: StepSettings, requests: list[PromptRequest], version: int) -> tuple[dict, list]:
    """Returns the step's metrics and its scored trajectories (in group, sample order)."""
    t0 = time.time()
    rollout = stream_rollouts(
        roles.generators,
        roles.rewards,
        requests,
        s.sampling,
        reward_batch=s.reward_batch,
        critic=roles.critic,
        reference=roles.reference,
        timeout_s=s.timeout_s,
    )
    batch = collate(rollout.trajectories, s.pad_id)
    add_response_values(batch, "old_values", rollout.values)
    add_response_values(batch, "ref_logprobs", rollout.ref_logprobs)
    batch["advantages"], batch["returns"], kl_behavior_ref = batch_advantages(
        batch,
        s.estimator,
        s.estimator_params,
        whiten=s.whiten,
        kl_coef=s.kl_coef,
        kl_estimator=s.kl_estimator,
        kl_in=s.kl_in,
    )
    if s.sft_coef > 0:
        batch["sft_mask"] = correct_response_mask(batch)
    t_train = time.time()
    metrics = roles.learner.train_step(batch) if s.train_policy else {}
    if roles.critic is not None:
        metrics.update(ray_get(roles.critic.train_step.remote(batch), "critic", "train_step", s.timeout_s))
    t_sync = time.time()
    if s.train_policy:
        metrics.update(publish_weights(roles, version + 1, s.timeout_s, s.sync_method))
    end = time.time()
    metrics.update(rollout.timing)
    metrics.update(rollout_stats(rollout.trajectories))
    tokens = float(batch["response_mask"].sum())
    metrics.update(
        {
            "kl/behavior_ref": kl_behavior_ref,
            "timing/train_s": t_sync - t_train,
            "timing/sync_s": end - t_sync,
            "timing/step_s": end - t0,
            "perf/tokens_per_s": tokens / max(1e-9, end - t0),
            "samples_step": len(rollout.trajectories),
            "generators/restarts": roles.generators.restarts,
            "generators/reissued_samples": roles.generators.reissued,
            "policy_version_sampled": min(t.policy_version for t in rollout.trajectories),
        }
    )
    return metrics, rollout.trajectories


def publish_weights(roles, version: int, timeout_s: float, method: str) -> dict:
    """Learner publishes `version` by `method` (sync.method); every generator loads it with generation
    paused; the hashes of every generator's read-back weights must equal those of what the learner sent
    (a dead generator is replaced by one that loads it)."""
    t0 = time.time()
    if method not in SYNC:
        raise ValueError(f"sync.method {method!r}: expected one of {', '.join(SYNC_METHODS)}")
    roles.learner.fingerprint()  # raises unless every learner rank holds rank 0's weights (what is sent)
    metrics = SYNC[method](roles.learner, roles.generators, version)
    return {"policy_version": version, **metrics, "sync/total_s": time.time() - t0}


def _sync_object_store(learner, pool, version: int) -> dict:
    """Rank 0's weights go into Ray's object store once; every generator loads them from there."""
    ref = learner.export_weights()
    return pool.load_weights(Published(version, learner.last_export["hashes"], ref))


def _sync_collective(learner, pool, version: int) -> dict:
    """Rank 0 broadcasts tensor by tensor to every generator's vLLM worker (learner.backend)."""
    channel = learner.weight_channel(world_size=1 + len(pool.actors))
    return pool.receive_weights(version, channel, lambda: learner.send_weights(channel), learner.export_weights)


# sync.method (orchestrator.config.SYNC_METHODS) -> the function _sync_<method> above
SYNC = registry.bind(SYNC_METHODS, globals(), "_sync_")
