"""Trajectories -> padded tensors for the learner and the estimators.

Layout of row b: [prompt_ids | response_ids | pad ...] (right padding). Position convention: the
log-prob at position t is log p(input_ids[b, t] | input_ids[b, :t]), computed from the logits at
t - 1; position 0 has no log-prob (0). `shift_logprobs` gives exactly that alignment, so
`behavior_logprobs`, learner log-probs and reference log-probs all line up with `response_mask`.

`sample_valid` is Trajectory.sample_valid: an invalid sample stays in the batch (its tokens are
not dropped silently) but is masked out: it is AdvantageInputs.sample_valid, and every loss uses
`valid_token_mask` (response_mask * sample_valid[:, None]).
Missing rewards: step_rewards None -> zeros (step_mask still marks the existing steps);
outcome_reward None -> 0.0.

`guided` [B] is 1.0 for a gold sample (info["guided"], orchestrator/guided.py): text no sampler wrote, so its
behaviour log-probs are no log-probs (zeros). The learner weights its loss apart (algo/guided.py), and the
behaviour-to-reference KL leaves it out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from algo import normalize, registry
from algo.advantages import AdvantageInputs, compute_advantages
from algo.critics import critic_advantages
from algo.kl import kl_estimate, kl_in_reward
from algo.losses import token_logprobs
from algo.trajectory import Trajectory


def _check(traj: Trajectory) -> None:
    """Spans must tile the response; per-token lists must match it; errors name the trajectory."""
    n = len(traj.response_ids)
    if not traj.prompt_ids:
        raise ValueError(f"trajectory {traj.uid!r}: empty prompt_ids (position 0 has no log-prob)")
    if len(traj.behavior_logprobs) != n:
        raise ValueError(
            f"trajectory {traj.uid!r}: {len(traj.behavior_logprobs)} behavior_logprobs for {n} response tokens"
        )
    pos = 0
    for start, end in traj.step_spans:
        if start != pos or end <= start:
            raise ValueError(
                f"trajectory {traj.uid!r}: step_spans {traj.step_spans} are not contiguous non-empty ranges"
            )
        pos = end
    if pos != n:
        raise ValueError(f"trajectory {traj.uid!r}: step_spans end at {pos}, response has {n} tokens")
    if traj.step_rewards is not None and len(traj.step_rewards) != len(traj.step_spans):
        raise ValueError(
            f"trajectory {traj.uid!r}: {len(traj.step_rewards)} step_rewards for {len(traj.step_spans)} steps"
        )


def collate(trajs: list[Trajectory], pad_id: int) -> dict[str, Tensor]:
    """See the module docstring. K = max steps (at least 1); L = max prompt + response length."""
    if not trajs:
        raise ValueError("collate needs at least one trajectory")
    for t in trajs:
        _check(t)
    B = len(trajs)
    L = max(len(t.prompt_ids) + len(t.response_ids) for t in trajs)
    K = max(1, max(t.num_steps for t in trajs))
    out = {
        "input_ids": torch.full((B, L), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros(B, L, dtype=torch.long),
        "response_mask": torch.zeros(B, L),
        "step_index": torch.full((B, L), -1, dtype=torch.long),
        "behavior_logprobs": torch.zeros(B, L),
        "step_rewards": torch.zeros(B, K),
        "step_mask": torch.zeros(B, K),
        "outcome": torch.zeros(B),
        "group_ids": torch.tensor([t.group_id for t in trajs], dtype=torch.long),
        "sample_valid": torch.tensor([float(t.sample_valid) for t in trajs]),
        "guided": torch.tensor([float(bool(t.info.get("guided", False))) for t in trajs]),
    }
    for b, t in enumerate(trajs):
        p, n = len(t.prompt_ids), len(t.response_ids)
        out["input_ids"][b, : p + n] = torch.tensor(t.prompt_ids + t.response_ids, dtype=torch.long)
        out["attention_mask"][b, : p + n] = 1
        out["response_mask"][b, p : p + n] = 1.0
        out["behavior_logprobs"][b, p : p + n] = torch.tensor(t.behavior_logprobs, dtype=torch.float32)
        for k, (start, end) in enumerate(t.step_spans):
            out["step_index"][b, p + start : p + end] = k
        out["step_mask"][b, : t.num_steps] = 1.0
        if t.step_rewards is not None:
            out["step_rewards"][b, : t.num_steps] = torch.tensor(t.step_rewards, dtype=torch.float32)
        out["outcome"][b] = float(t.outcome_reward) if t.outcome_reward is not None else 0.0
    return out


def shift_logprobs(logits: Tensor, input_ids: Tensor) -> Tensor:
    """[B, L, V], [B, L] -> [B, L]: out[b, t] = log p(input_ids[b, t] | < t) from logits[b, t - 1]; out[:, 0] = 0."""
    if logits.shape[:2] != input_ids.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and input_ids {tuple(input_ids.shape)} disagree")
    first = torch.zeros(input_ids.shape[0], 1, dtype=torch.float32, device=logits.device)
    return torch.cat([first, token_logprobs(logits[:, :-1], input_ids[:, 1:])], dim=1)


def valid_token_mask(batch: dict[str, Tensor], key: str = "response_mask") -> Tensor:
    """batch[key] * sample_valid: the tokens of a masked sample (a reward source failed) count nowhere."""
    return batch[key].float() * batch["sample_valid"].float()[:, None]


def add_response_values(batch: dict[str, Tensor], key: str, per_traj: list[list[float]] | None) -> None:
    """batch[key] = per-response-token lists (critic values, reference log-probs) at the batch's response
    positions, 0 elsewhere; nothing when per_traj is None."""
    if per_traj is None:
        return
    out = torch.zeros_like(batch["behavior_logprobs"])
    for b, vals in enumerate(per_traj):
        pos = batch["response_mask"][b].nonzero().squeeze(1)
        if len(vals) != len(pos):
            raise ValueError(f"{key}: sample {b} has {len(vals)} values for {len(pos)} response tokens")
        out[b, pos] = torch.tensor(vals, dtype=out.dtype)
    batch[key] = out


def critic_key(key: str, reward: str) -> str:
    """The batch key of one critic's tensor with one critic per reward (algo.critics): "old_values/process",
    "returns/outcome", ...; the single critic of the combined reward uses "old_values" and "returns"."""
    return f"{key}/{reward}"


def correct_response_mask(batch: dict[str, Tensor]) -> Tensor:
    """The response tokens of samples whose outcome reward is above 0.5 (the SFT term imitates those)."""
    return batch["response_mask"] * batch["outcome"].gt(0.5).float()[:, None]


def batch_advantages(
    batch: dict[str, Tensor],
    estimator: str,
    params: dict[str, Any],
    *,
    whiten: bool,
    kl_coef: float,
    kl_estimator: str,
    kl_in: str,
    critic_weights: Mapping[str, float] | None = None,
) -> tuple[Tensor, dict[str, Tensor], float]:
    """The estimator `estimator` (algo.registry.ESTIMATORS) with its config `params` on a collated batch.

    With reference log-probs in the batch, the KL of the behaviour policy to the reference is estimated;
    with kl_in == "reward" it enters the reward as -kl_coef * KL per token. Returns advantages, the critics'
    targets by batch key and the mean KL per response token (0 without a reference). The targets: without
    critic_weights, {"returns": ...} (zeros for estimators without a critic) for one critic on the combined
    reward, its values batch["old_values"]; with critic_weights (reward -> weight, algo.critics), one critic
    per reward, its values batch[critic_key("old_values", reward)], its targets under critic_key("returns",
    reward), and the advantages are the weighted sum of the critics' (algo.critics.critic_advantages).
    """
    if kl_in not in registry.KL_PLACEMENTS:
        raise registry.unknown("KL placement", kl_in, registry.KL_PLACEMENTS)
    mask = batch["response_mask"]
    kl, kl_mask = None, mask
    if "ref_logprobs" in batch:
        guided = batch.get("guided")
        if guided is not None and bool((guided > 0).any()):
            if kl_in == "reward":  # the config refuses it too (orchestrator/feature_rules.py)
                raise ValueError("kl_in='reward' needs behaviour log-probs of every sample; gold samples have none")
            kl_mask = mask * (1.0 - guided)[:, None]  # the sampled rows only
        kl = kl_estimate(batch["behavior_logprobs"], batch["ref_logprobs"], kl_estimator) * kl_mask
    inputs = AdvantageInputs(
        mask=mask,
        step_index=batch["step_index"],
        step_rewards=batch["step_rewards"],
        step_mask=batch["step_mask"],
        outcome=batch["outcome"],
        group_ids=batch["group_ids"],
        values=batch.get("old_values"),
        sample_valid=batch["sample_valid"],
        token_rewards=kl_in_reward(kl, kl_coef) if (kl is not None and kl_in == "reward") else None,
    )
    if critic_weights:
        values = {reward: batch[critic_key("old_values", reward)] for reward in critic_weights}
        adv, returns = critic_advantages(estimator, inputs, critic_weights, values, **params)
        targets = {critic_key("returns", reward): ret for reward, ret in returns.items()}
    else:
        adv, ret = compute_advantages(estimator, inputs, **params)
        targets = {"returns": ret if ret is not None else torch.zeros_like(adv)}
    if whiten:
        adv = normalize.whiten(adv, valid_token_mask(batch))
    kl_mean = float(kl.sum() / kl_mask.sum().clamp(min=1)) if kl is not None else 0.0
    return adv, targets, kl_mean
