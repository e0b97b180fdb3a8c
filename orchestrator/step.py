"""One RL train step: each line of train_step is one arrow of the dataflow.

prompts -> generate (streamed) -> reward / critic / reference scoring -> advantages -> learner update
        -> publish weights (version + 1) -> generators load them, per-tensor hashes compared

Generation and publishing belong to the pipeline (orchestrator/pipeline.py), which with train.max_staleness >= 1
runs them for the next step while the learner trains on this one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from algo import registry
from algo.batch import add_response_values, batch_advantages, collate, correct_response_mask, critic_key
from algo.trajectory import PromptRequest
from orchestrator.config import SYNC_METHODS
from orchestrator.generators import Published
from orchestrator.metrics import rollout_stats
from orchestrator.pipeline import Pipeline, Staged
from orchestrator.rollout import Rollout, stream_rollouts
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
    prefetch: bool = False  # may the pipeline start the next step's batch now (False at evaluations, checkpoints)
    # algo.critics: reward -> weight of its critic's advantages; empty = one critic on the combined reward
    critic_weights: dict[str, float] = field(default_factory=dict)
    guided: bool = False  # algo.guided.enable: gold samples for groups that all failed (orchestrator/guided.py)


def train_step(roles, s: StepSettings, pipeline: Pipeline, step: int, version: int) -> tuple[dict, list]:
    """Step `step` for the learner at `version`: its metrics and its scored trajectories (in group, sample
    order). The pipeline hands over the scored batch (generated now, or while the previous step trained)
    and publishes weights to the generators when the batch would otherwise be too old (orchestrator/pipeline.py)."""
    t0 = time.time()
    rollout, metrics = pipeline.next(step, version, prefetch=s.prefetch)
    batch = collate(rollout.trajectories, s.pad_id)
    add_response_values(batch, "old_values", rollout.values)
    for reward, values in rollout.critic_values.items():
        add_response_values(batch, critic_key("old_values", reward), values)
    add_response_values(batch, "ref_logprobs", rollout.ref_logprobs)
    batch["advantages"], targets, kl_behavior_ref = batch_advantages(
        batch,
        s.estimator,
        s.estimator_params,
        whiten=s.whiten,
        kl_coef=s.kl_coef,
        kl_estimator=s.kl_estimator,
        kl_in=s.kl_in,
        critic_weights=s.critic_weights,
    )
    batch.update(targets)  # "returns", or one "returns/<reward>" per critic of algo.critics
    if s.sft_coef > 0:
        batch["sft_mask"] = correct_response_mask(batch)
    t_train = time.time()
    metrics.update(roles.learner.train_step(batch) if s.train_policy else {})
    if roles.critic is not None:
        metrics.update(ray_get(roles.critic.train_step.remote(batch), "critic", "train_step", s.timeout_s))
    metrics.update(train_critics(roles.critics, batch, s.timeout_s))
    end = time.time()
    metrics.update(rollout.timing)
    metrics.update(rollout_stats(rollout.trajectories))
    tokens = float(batch["response_mask"].sum())
    metrics.update(
        {
            "policy_version": version + 1 if s.train_policy else version,
            "kl/behavior_ref": kl_behavior_ref,
            "timing/train_s": end - t_train,
            "timing/step_s": end - t0,
            "perf/tokens_per_s": tokens / max(1e-9, end - t0),
            "samples_step": len(rollout.trajectories),
            "generators/restarts": roles.generators.restarts,
            "generators/reissued_samples": roles.generators.reissued,
            "policy_version_sampled": min(t.policy_version for t in rollout.trajectories),
        }
    )
    metrics.setdefault("timing/sync_s", 0.0)
    return metrics, rollout.trajectories


def train_critics(critics: dict, batch: dict, timeout_s: float) -> dict:
    """Each critic of algo.critics (reward -> its CriticWorker) trains on its own values and returns, handed to
    it as "old_values" / "returns" (the keys a CriticWorker reads), all of them at once. Their metrics are
    prefixed critic/<reward>/ so that the critics do not overwrite each other's (or the learner's)."""
    calls = {
        reward: critic.train_step.remote(
            {
                **batch,
                "old_values": batch[critic_key("old_values", reward)],
                "returns": batch[critic_key("returns", reward)],
            }
        )
        for reward, critic in critics.items()
    }
    metrics = {}
    for reward, call in calls.items():
        stats = ray_get(call, f"critic-{reward}", "train_step", timeout_s)
        metrics.update({f"critic/{reward}/{key}": value for key, value in stats.items()})
    return metrics


def score_rollout(roles, s: StepSettings, requests: list[PromptRequest]) -> Rollout:
    """Generate the batch of `requests` and score each trajectory as it finishes (orchestrator/rollout.py);
    then an online PRM learns from the scored batch, in batch order, before the next batch is scored (in
    the rollout's thread, so the order of scoring and learning never depends on timing)."""
    rollout = stream_rollouts(
        roles.generators,
        roles.rewards,
        requests,
        s.sampling,
        reward_batch=s.reward_batch,
        critic=roles.critic,
        critics=roles.critics,
        reference=roles.reference,
        timeout_s=s.timeout_s,
    )
    if roles.online_prm is not None:
        t0 = time.time()
        learned = roles.online_prm.learn.remote(rollout.trajectories)
        rollout.timing.update(ray_get(learned, "reward", "learn", s.timeout_s))
        rollout.timing["timing/prm_learn_s"] = time.time() - t0
    return rollout


def publish_weights(roles, version: int, timeout_s: float, method: str) -> dict:
    """Learner publishes `version` by `method` (sync.method); every generator loads it with generation
    paused; the hashes of every generator's read-back weights must equal those of what the learner sent
    (a dead generator is replaced by one that loads it)."""
    return stage_weights(roles, version, timeout_s, method).finish()


def stage_weights(roles, version: int, timeout_s: float, method: str) -> Staged:
    """The learner's half of publishing `version`, done now (every rank holds the same weights; with
    object_store, rank 0's weights go into Ray's object store), while the generators may still be sampling;
    Staged.finish does the generators' half, which needs them idle, and returns the sync metrics."""
    t0 = time.time()
    if method not in SYNC:
        raise ValueError(f"sync.method {method!r}: expected one of {', '.join(SYNC_METHODS)}")
    roles.learner.fingerprint()  # raises unless every learner rank holds rank 0's weights (what is sent)
    load, overlaps_training = SYNC[method](roles.learner, roles.generators, version)
    staged = time.time() - t0

    def finish() -> dict:
        t1 = time.time()
        metrics = load()
        return {"policy_version": version, **metrics, "sync/stage_s": staged, "sync/total_s": staged + time.time() - t1}

    return Staged(finish, overlaps_training)


def _sync_object_store(learner, pool, version: int) -> tuple[Callable[[], dict], bool]:
    """Rank 0's weights go into Ray's object store once (now); every generator loads them from there (later,
    possibly while the learner trains on: the copy in the store does not change)."""
    ref = learner.export_weights()  # sets learner.last_export, the hashes of what it sent
    published = Published(version, learner.last_export["hashes"], ref)
    return (lambda: pool.load_weights(published)), True


def _sync_collective(learner, pool, version: int) -> tuple[Callable[[], dict], bool]:
    """Rank 0 broadcasts tensor by tensor to every generator's vLLM worker (learner.backend): both sides at
    once, later, and before the learner trains again (it would broadcast its new weights)."""

    def broadcast() -> dict:
        channel = learner.weight_channel(world_size=1 + len(pool.actors))
        return pool.receive_weights(version, channel, lambda: learner.send_weights(channel), learner.export_weights)

    return broadcast, False


# sync.method (orchestrator.config.SYNC_METHODS) -> the function _sync_<method> above
SYNC = registry.bind(SYNC_METHODS, globals(), "_sync_")
