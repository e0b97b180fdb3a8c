"""Policy / value losses, loss aggregation, and log-prob / entropy from logits.

- PPO clipped surrogate (Schulman et al. 1707.06347) with separate low / high clip ranges
  (clip-higher of DAPO, Yu et al. 2503.14476) and dual clip (Ye et al. 1912.09729): for negative
  advantages the loss is also bounded by -c * A (c > 1), so a huge ratio on a bad token cannot blow
  up the update. Departure: log-ratios are clamped to [-20, 20] before exp (as veRL does) so one
  absurd token cannot give inf.
- Value loss: PPO's clipped value loss, 0.5 * max((v - R)^2, (v_clip - R)^2).
- aggregate(): `token` (mean over all tokens of the batch), `step` (mean within each step, then over
  steps), `sequence` (mean within each sequence, then over sequences), `token_sum_norm` (sum / a
  constant `norm`, Dr. GRPO, Liu et al. 2503.20783; default norm = T).
Stats are plain floats over real tokens (token means, whatever `agg` is).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from algo.kl import kl_estimate

_MAX_LOG_RATIO = 20.0


def _masked(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask > 0, x, torch.zeros_like(x))


def _agg_token(x: Tensor, mask: Tensor, step_index: Tensor, norm: float | None) -> Tensor:
    return _masked(x, mask).sum() / mask.sum().clamp_min(1.0)


def _agg_sequence(x: Tensor, mask: Tensor, step_index: Tensor, norm: float | None) -> Tensor:
    n = mask.sum(dim=1)
    per_seq = _masked(x, mask).sum(dim=1) / n.clamp_min(1.0)
    has = (n > 0).to(x.dtype)
    return (per_seq * has).sum() / has.sum().clamp_min(1.0)


def _agg_step(x: Tensor, mask: Tensor, step_index: Tensor, norm: float | None) -> Tensor:
    B = x.shape[0]
    real = (mask > 0) & (step_index >= 0)
    if not bool(real.any()):
        return _masked(x, mask).sum() * 0.0  # keeps the graph; nothing to average
    K = int(step_index[real].max()) + 1
    idx = torch.where(real, step_index, torch.full_like(step_index, K))  # column K = bin
    zeros = torch.zeros(B, K + 1, dtype=x.dtype, device=x.device)
    sums = zeros.scatter_add(1, idx, _masked(x, real.to(x.dtype)))[:, :K]
    counts = zeros.scatter_add(1, idx, real.to(x.dtype))[:, :K]
    has = counts > 0
    return (sums[has] / counts[has]).mean()


def _agg_token_sum_norm(x: Tensor, mask: Tensor, step_index: Tensor, norm: float | None) -> Tensor:
    return _masked(x, mask).sum() / float(norm if norm is not None else mask.shape[-1])


AGGREGATORS: dict[str, Callable[..., Tensor]] = {
    "token": _agg_token,
    "step": _agg_step,
    "sequence": _agg_sequence,
    "token_sum_norm": _agg_token_sum_norm,
}


def aggregate(x: Tensor, mask: Tensor, step_index: Tensor, mode: str, *, norm: float | None = None) -> Tensor:
    """Scalar from per-token x [B, T] over real tokens (mask 1.0); see the module docstring."""
    if mode not in AGGREGATORS:
        raise ValueError(f"unknown aggregation mode {mode!r}; valid modes: {sorted(AGGREGATORS)}")
    if x.shape != mask.shape or x.shape != step_index.shape:
        raise ValueError(f"x {tuple(x.shape)}, mask {tuple(mask.shape)}, step_index {tuple(step_index.shape)} differ")
    return AGGREGATORS[mode](x, mask.to(x.dtype), step_index, norm)


def _token_mean(x: Tensor, mask: Tensor) -> float:
    return float(_masked(x, mask).sum() / mask.sum().clamp_min(1.0))


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    step_index: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    agg: str = "token",
) -> tuple[Tensor, dict[str, float]]:
    """PPO clip loss [B, T] -> scalar; stats: clip_frac, dual_clip_frac, approx_kl, ratio_mean, ratio_max."""
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (got {dual_clip})")
    mask = mask.to(logprobs.dtype)
    log_ratio = (logprobs - old_logprobs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    loss1 = -advantages * ratio
    loss2 = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(loss1, loss2)
    clipped = (loss2 > loss1).to(logprobs.dtype)
    dual = torch.zeros_like(clipped)
    if dual_clip is not None:
        loss3 = -dual_clip * advantages  # > 0 where A < 0: caps the loss of a bad token
        dual = ((advantages < 0) & (loss > loss3)).to(logprobs.dtype)
        loss = torch.where(advantages < 0, torch.minimum(loss, loss3), loss)
    total = aggregate(loss, mask, step_index, agg)
    with torch.no_grad():
        real = mask > 0
        stats = {
            "clip_frac": _token_mean(clipped, mask),
            "dual_clip_frac": _token_mean(dual, mask),
            # samples come from the old policy: k3 with log r = new - old estimates KL(old || new)
            "approx_kl": _token_mean(kl_estimate(old_logprobs, logprobs, "k3"), mask),
            "ratio_mean": _token_mean(ratio, mask),
            "ratio_max": float(ratio[real].max()) if bool(real.any()) else 1.0,
        }
    return total, stats


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    step_index: Tensor,
    *,
    clip: float | None = 0.2,
    agg: str = "token",
) -> tuple[Tensor, dict[str, float]]:
    """Clipped value loss [B, T] -> scalar; stats: value_clip_frac, value_mean, value_error."""
    mask = mask.to(values.dtype)
    err = (values - returns) ** 2
    if clip is None:
        loss, clipped = 0.5 * err, torch.zeros_like(err)
    else:
        v_clip = old_values + (values - old_values).clamp(-clip, clip)
        err_clip = (v_clip - returns) ** 2
        loss, clipped = 0.5 * torch.maximum(err, err_clip), (err_clip > err).to(values.dtype)
    total = aggregate(loss, mask, step_index, agg)
    with torch.no_grad():
        stats = {
            "value_clip_frac": _token_mean(clipped, mask),
            "value_mean": _token_mean(values, mask),
            "value_error": _token_mean(err, mask),
        }
    return total, stats


def entropy_from_logits(logits: Tensor) -> Tensor:
    """[B, T, V] -> [B, T] entropy in nats: logsumexp(l) - sum softmax(l) * l (stable for any scale).

    One batch row at a time in float32, so a bf16 [B, T, V] never gets a float32 copy of full size.
    """
    rows = []
    for row in logits:
        lg = row.float()
        p = torch.softmax(lg, dim=-1)
        rows.append(torch.logsumexp(lg, dim=-1) - (p * lg.masked_fill(p == 0, 0.0)).sum(dim=-1))  # -inf logits
    return torch.stack(rows)


def token_logprobs(logits: Tensor, labels: Tensor) -> Tensor:
    """[B, T, V], [B, T] long -> [B, T] log softmax(logits)[label], without a [B, T, V] log-softmax:
    gather the label's logit and subtract logsumexp, one batch row at a time in float32."""
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree")
    V = logits.shape[-1]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= V):
        raise ValueError(f"labels hold ids outside the vocabulary [0, {V})")
    rows = []
    for row, lab in zip(logits, labels):
        lg = row.float()
        rows.append(lg.gather(-1, lab[:, None]).squeeze(-1) - torch.logsumexp(lg, dim=-1))
    return torch.stack(rows)
