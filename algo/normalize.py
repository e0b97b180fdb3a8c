"""Reward / advantage normalisation: masked statistics, whitening, group baselines.

Conventions (shared by every estimator, so numbers agree across the code base):
- standard deviations are unbiased (Bessel, n - 1), as in the GRPO implementations of TRL,
  OpenRLHF and veRL; a set of one element has std 0;
- group normalisation is (x - mean) / (std + eps) (DeepSeekMath 2402.03300 section 4.1.2), and
  with `std_normalize=False` only the mean is removed (Dr. GRPO, Liu et al. 2503.20783); a
  constant group (std 0) gives exactly 0, even with eps = 0;
- an element whose weight is 0 takes no part in any statistic and comes out as 0.
"""

from __future__ import annotations

import torch
from torch import Tensor


def safe_scale(std: Tensor, eps: float) -> Tensor:
    """std + eps, or 1 where std + eps is 0: a constant set has nothing to scale (x - mean = 0
    there), and 0 / 0 must not turn into NaN when a caller asks for eps = 0."""
    scale = std + eps
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def zero_masked(x: Tensor, mask: Tensor) -> Tensor:
    """x where mask > 0, else 0. torch.where, not a product: NaN / inf outside the mask must not leak."""
    return torch.where(mask > 0, x, torch.zeros_like(x))


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x over mask == 1 (0 when the mask is empty); NaN / inf outside the mask is ignored."""
    return zero_masked(x, mask).sum() / mask.sum().clamp_min(1.0)


def masked_var(x: Tensor, mask: Tensor) -> Tensor:
    """Unbiased variance of x over mask == 1 (0 with fewer than two elements)."""
    n = mask.sum()
    mean = masked_mean(x, mask)
    ss = zero_masked((x - mean) ** 2, mask).sum()
    return torch.where(n > 1, ss / (n - 1).clamp_min(1.0), torch.zeros_like(ss))


def whiten(adv: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Advantage whitening over the masked entries: (a - mean) / sqrt(var + eps); 0 where masked.

    With shift_mean=False the mean is added back, so only the scale changes.
    """
    mask = mask.to(adv.dtype)
    mean, var = masked_mean(adv, mask), masked_var(adv, mask)
    out = (adv - mean) / safe_scale(torch.sqrt(var + eps), 0.0)
    if not shift_mean:
        out = out + mean
    return torch.where(mask > 0, out, torch.zeros_like(out))


def _group_index(group_ids: Tensor) -> tuple[Tensor, int]:
    _, inverse = torch.unique(group_ids, return_inverse=True)
    return inverse, int(inverse.max().item()) + 1 if inverse.numel() else 0


def group_stats(x: Tensor, group_ids: Tensor, weight: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-element (group mean, unbiased group std, group count) for 1-D x; weight 0 = not counted."""
    w = torch.ones_like(x) if weight is None else weight.to(x.dtype)
    x = torch.where(w > 0, x, torch.zeros_like(x))  # a NaN in an uncounted element must not spread
    idx, g = _group_index(group_ids)
    zeros = torch.zeros(g, dtype=x.dtype, device=x.device)
    count = zeros.index_add(0, idx, w)
    mean = zeros.index_add(0, idx, x * w) / count.clamp_min(1.0)
    ss = zeros.index_add(0, idx, w * (x - mean[idx]) ** 2)
    std = torch.where(count > 1, ss / (count - 1).clamp_min(1.0), zeros).sqrt()
    return mean[idx], std[idx], count[idx]


def group_normalize(
    x: Tensor,
    group_ids: Tensor,
    weight: Tensor | None = None,
    *,
    eps: float = 1e-6,
    std_normalize: bool = True,
) -> Tensor:
    """(x - group mean) / (group std + eps) over 1-D elements sharing a group id; 0 where weight == 0."""
    mean, std, _ = group_stats(x, group_ids, weight)
    out = x - mean
    if std_normalize:
        out = out / safe_scale(std, eps)
    w = torch.ones_like(x) if weight is None else weight.to(x.dtype)
    return torch.where(w > 0, out, torch.zeros_like(out))


def group_baseline(rewards: Tensor, group_ids: Tensor, weight: Tensor | None = None) -> Tensor:
    """[B] mean reward of each sample's group (the sample included)."""
    return group_stats(rewards, group_ids, weight)[0]


def leave_one_out_baseline(rewards: Tensor, group_ids: Tensor, weight: Tensor | None = None) -> Tensor:
    """[B] mean reward of the *other* samples of the group (RLOO, Ahmadian et al. 2402.14740).

    A sample alone in its group has no others: its baseline is its own reward (advantage 0).
    """
    w = torch.ones_like(rewards) if weight is None else weight.to(rewards.dtype)
    rewards = torch.where(w > 0, rewards, torch.zeros_like(rewards))
    mean, _, count = group_stats(rewards, group_ids, w)
    others = (mean * count - rewards * w) / (count - w).clamp_min(1.0)
    return torch.where(count - w > 0, others, rewards)
