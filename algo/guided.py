"""Guided off-policy samples, the pure part: which groups get a gold sample, and the capped weight of its loss.

LUFFY (Yan et al. 2504.14945, "Learning to Reason under Off-Policy Guidance") mixes off-policy traces into a
prompt's group of on-policy samples: the group's advantages are computed over both, and the off-policy term of
the loss is taken with an importance ratio and no PPO clip. Here the off-policy trace is the task's gold
solution, and only a group whose samples all failed gets one (orchestrator/guided.py builds and scores it): such
a group gives a group-relative estimator nothing to learn from, with the gold in it the gold gets a positive
advantage and the failures a negative one. For a gold token the policy loss is

    -min(pi_theta / mu, max_weight) * A        (no clip: the gradient flows through the ratio below the cap)

mu is the policy at the version that made the batch, i.e. the old log-probs the learner recomputes
(algo.off_policy=recompute): nobody sampled the gold text, so no behaviour log-probs of it exist.
Departures from LUFFY: its ratio is over the probability of the model that wrote the trace and is reshaped
(its policy shaping), ours is over the policy itself; and ours is capped. Without a cap the ratio grows on every
gold token an update makes likelier, and with it that token's gradient; at the cap the gradient is zero, so a
cap bounds how far one step may push a gold token the policy finds unlikely (like PPO's clip, but looser).
"""

from __future__ import annotations

import torch
from torch import Tensor

_MAX_LOG_RATIO = 20.0  # as in algo/losses.py: one absurd token must not give inf


def failed_groups(outcomes: dict[int, list[float]]) -> list[int]:
    """The ids of the groups all of whose valid samples failed (outcome reward <= 0), in `outcomes`' order.

    `outcomes` maps a group id to the outcome rewards of its valid samples only (a masked sample's reward
    source failed: it says nothing). A group without a valid sample gets no gold: nothing says it failed.
    """
    return [gid for gid, rewards in outcomes.items() if rewards and all(r <= 0.0 for r in rewards)]


def guided_weight(log_ratio: Tensor, max_weight: float) -> Tensor:
    """min(exp(log_ratio), max_weight) per token, with the gradient of exp(log_ratio) below the cap and none
    above it. log_ratio = log pi_theta - log mu."""
    if not max_weight > 0:
        raise ValueError(f"max_weight must be > 0 (got {max_weight})")
    return log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO).exp().clamp(max=max_weight)


def weight_sums(weight: Tensor, mask: Tensor, guided: Tensor) -> Tensor:
    """[4] over the real tokens (mask 1.0) of the guided rows (guided [B] > 0) of a [B, T] weight:
    (sum of w, sum of w^2, tokens, max w). The first three add up over micro-batches and ranks; the max does
    not (the learner reduces it by max); it is 0 when there is no guided token."""
    real = (mask > 0) & (guided > 0)[:, None]
    w = weight.detach()[real]
    peak = w.max() if w.numel() else w.new_zeros(())
    return torch.stack([w.sum(), (w**2).sum(), w.new_tensor(float(w.numel())), peak])


def weight_stats(total: float, total_sq: float, tokens: float, peak: float) -> dict[str, float]:
    """guided/weight_mean, _std and _max over the guided tokens of a step, from weight_sums reduced over the
    step's micro-batches, ranks and updates; {} when the step had no guided token (no weight to describe)."""
    if tokens <= 0:
        return {}
    mean = total / tokens
    return {
        "guided/weight_mean": mean,
        "guided/weight_std": max(0.0, total_sq / tokens - mean**2) ** 0.5,
        "guided/weight_max": peak,
    }
