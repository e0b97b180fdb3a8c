"""One RL train step: each line of train_step is one arrow of the dataflow.

    prompts -> generate (streamed) -> reward / critic / reference scoring -> advantages -> learner update
            -> publish weights (version + 1) -> generators load them, checksums compared
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

import torch

from algo.advantages import ESTIMATORS, AdvantageInputs, compute_advantages
from algo.batch import collate
from algo.kl import kl_estimate
from algo.normalize import whiten
from algo.trajectory import PromptRequest
from orchestrator.generators import Published
from orchestrator.metrics import rollout_stats
from orchestrator.rollout import stream_rollouts
from orchestrator.runtime import RoleError, get


@dataclass(frozen=True)
class StepSettings:
    """Plain values the step needs, read once from the config."""

    sampling: dict              # n, temperature, top_p, max_tokens, seed (the step's; samples derive theirs)
    estimator: str
    estimator_params: dict      # filtered to the estimator's own keyword arguments
    whiten: bool
    kl_coef: float
    kl_estimator: str
    kl_in_reward: bool
    sft_coef: float
    train_policy: bool          # False during critic warm-up
    pad_id: int
    timeout_s: float


def estimator_params(name: str, candidates: dict) -> dict:
    """The subset of `candidates` the named estimator accepts (each estimator declares its own knobs)."""
    accepted = inspect.signature(ESTIMATORS[name]).parameters
    return {k: v for k, v in candidates.items() if k in accepted}


def train_step(roles, s: StepSettings, requests: list[PromptRequest], version: int) -> tuple[dict, list]:
    """Returns the step's metrics and its scored trajectories (in group, sample order)."""
    t0 = time.time()
    rollout = stream_rollouts(roles.generators, roles.reward, requests, s.sampling, critic=roles.critic,
                              reference=roles.reference, timeout_s=s.timeout_s)
    batch = collate(rollout.trajectories, s.pad_id)
    add_response_values(batch, "old_values", rollout.values)
    add_response_values(batch, "ref_logprobs", rollout.ref_logprobs)
    batch["advantages"], batch["returns"], kl_behavior_ref = advantages(batch, s)
    if s.sft_coef > 0:
        batch["sft_mask"] = batch["response_mask"] * batch["outcome"].gt(0.5).float()[:, None]
    t_train = time.time()
    metrics = roles.learner.train_step(batch) if s.train_policy else {}
    if roles.critic is not None:
        metrics.update(get(roles.critic.train_step.remote(batch), "critic", "train_step", s.timeout_s))
    t_sync = time.time()
    if s.train_policy:
        metrics.update(publish_weights(roles, version + 1, s.timeout_s))
    end = time.time()
    metrics.update(rollout.timing)
    metrics.update(rollout_stats(rollout.trajectories))
    tokens = float(batch["response_mask"].sum())
    metrics.update({"kl/behavior_ref": kl_behavior_ref, "timing/train_s": t_sync - t_train,
                    "timing/sync_s": end - t_sync, "timing/step_s": end - t0,
                    "perf/tokens_per_s": tokens / max(1e-9, end - t0),
                    "samples_step": len(rollout.trajectories), "generators/restarts": roles.generators.restarts,
                    "generators/reissued_samples": roles.generators.reissued,
                    "policy_version_sampled": min(t.policy_version for t in rollout.trajectories)})
    return metrics, rollout.trajectories


def advantages(batch: dict, s: StepSettings) -> tuple[torch.Tensor, torch.Tensor, float]:
    """algo estimator on the collated batch; KL to the reference goes into the reward if configured.
    Returns advantages, returns and the mean KL of the behaviour policy to the reference (0 without one)."""
    mask = batch["response_mask"]
    kl = None
    if "ref_logprobs" in batch:
        kl = kl_estimate(batch["behavior_logprobs"], batch["ref_logprobs"], s.kl_estimator) * mask
    inputs = AdvantageInputs(
        mask=mask, step_index=batch["step_index"], step_rewards=batch["step_rewards"],
        step_mask=batch["step_mask"], outcome=batch["outcome"], group_ids=batch["group_ids"],
        values=batch.get("old_values"), sample_mask=batch["sample_valid"],
        token_rewards=(-s.kl_coef * kl) if (kl is not None and s.kl_in_reward) else None)
    adv, ret = compute_advantages(s.estimator, inputs, **s.estimator_params)
    if s.whiten:
        adv = whiten(adv, mask * batch["sample_valid"][:, None])
    kl_mean = float(kl.sum() / mask.sum().clamp(min=1)) if kl is not None else 0.0
    return adv, (ret if ret is not None else torch.zeros_like(adv)), kl_mean


def add_response_values(batch: dict, key: str, per_traj: list[list[float]] | None) -> None:
    """Place per-response-token lists (critic values, reference log-probs) at the batch's response
    positions; the rest stays 0."""
    if per_traj is None:
        return
    out = torch.zeros_like(batch["behavior_logprobs"])
    for b, vals in enumerate(per_traj):
        pos = batch["response_mask"][b].nonzero().squeeze(1)
        if len(vals) != len(pos):
            raise RoleError(f"{key}: sample {b} has {len(vals)} values for {len(pos)} response tokens")
        out[b, pos] = torch.tensor(vals, dtype=out.dtype)
    batch[key] = out


def publish_weights(roles, version: int, timeout_s: float) -> dict:
    """Learner publishes `version`; every generator loads it with generation paused; checksums must match
    (a dead generator is replaced by one that loads it)."""
    t0 = time.time()
    published = Published(version, roles.learner.export_weights(), roles.learner.fingerprint())
    metrics = roles.generators.load_weights(published)
    return {"policy_version": version, **metrics, "sync/total_s": time.time() - t0}
