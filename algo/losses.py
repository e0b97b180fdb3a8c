"""Policy / value losses, loss aggregation, and log-prob / entropy from logits.

- PPO clipped surrogate (Schulman et al. 1707.06347) with separate low / high clip ranges
  (clip-higher of DAPO, Yu et al. 2503.14476) and dual clip (Ye et al. 1912.09729): for negative
  advantages the loss is also bounded by -c * A (c > 1), so a huge ratio on a bad token cannot blow
  up the update. Departure: log-ratios are clamped to [-20, 20] before exp (as veRL does) so one
  absurd token cannot give inf.
- Value loss: PPO's clipped value loss, 0.5 * max((v - R)^2, (v_clip - R)^2).
- aggregate(): `token` (mean over all tokens of the batch), `step` (mean within each step, then over
  steps), `sequence` (mean within each sequence, then over sequences); the names are
  algo.registry.LOSS_AGGREGATIONS. agg_units() counts what a mode averages over (tokens, steps or
  sequences), so a loss cut into micro-batches can be weighted back to the mean of the whole batch.
- Guided rows (LUFFY, Yan et al. 2504.14945; algo/guided.py): a row flagged in `guided` holds a gold solution no
  sampler wrote; its per-token loss is -min(ratio, max_weight) * A, unclipped, in place of the PPO term.
Stats are plain floats over real tokens (token means, whatever `agg` is).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from algo import registry
from algo.guided import guided_weight
from algo.kl import kl_estimate
from algo.normalize import zero_masked

_MAX_LOG_RATIO = 20.0


def _mean_token(x: Tensor, mask: Tensor, step_index: Tensor) -> Tensor:
    return zero_masked(x, mask).sum() / mask.sum().clamp_min(1.0)


def _mean_sequence(x: Tensor, mask: Tensor, step_index: Tensor) -> Tensor:
    n = mask.sum(dim=1)
    per_seq = zero_masked(x, mask).sum(dim=1) / n.clamp_min(1.0)
    has = (n > 0).to(x.dtype)
    return (per_seq * has).sum() / has.sum().clamp_min(1.0)


def _mean_step(x: Tensor, mask: Tensor, step_index: Tensor) -> Tensor:
    B = x.shape[0]
    real = (mask > 0) & (step_index >= 0)
    if not bool(real.any()):
        return zero_masked(x, mask).sum() * 0.0  # keeps the graph; nothing to average
    K = int(step_index[real].max()) + 1
    idx = torch.where(real, step_index, torch.full_like(step_index, K))  # column K = bin
    zeros = torch.zeros(B, K + 1, dtype=x.dtype, device=x.device)
    sums = zeros.scatter_add(1, idx, zero_masked(x, real.to(x.dtype)))[:, :K]
    counts = zeros.scatter_add(1, idx, real.to(x.dtype))[:, :K]
    has = counts > 0
    return (sums[has] / counts[has]).mean()


def _units_token(mask: Tensor, step_index: Tensor) -> Tensor:
    return mask.sum()


def _units_sequence(mask: Tensor, step_index: Tensor) -> Tensor:
    return (mask.sum(dim=1) > 0).sum().to(mask.dtype)


def _units_step(mask: Tensor, step_index: Tensor) -> Tensor:
    real = (mask > 0) & (step_index >= 0)
    if not bool(real.any()):
        return mask.new_zeros(())
    K = int(step_index[real].max()) + 1
    rows = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(step_index)
    return mask.new_tensor(float(torch.unique((rows * K + step_index)[real]).numel()))


# registry name -> (mean over the mode's units, number of units)
_MEANS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = registry.bind(
    registry.LOSS_AGGREGATIONS, globals(), "_mean_"
)
_UNITS: dict[str, Callable[[Tensor, Tensor], Tensor]] = registry.bind(registry.LOSS_AGGREGATIONS, globals(), "_units_")


def _check_mode(mode: str) -> None:
    if mode not in _MEANS:
        raise registry.unknown("loss aggregation", mode, registry.LOSS_AGGREGATIONS)


def aggregate(x: Tensor, mask: Tensor, step_index: Tensor, mode: str) -> Tensor:
    """Scalar from per-token x [B, T] over real tokens (mask 1.0); see the module docstring."""
    _check_mode(mode)
    if x.shape != mask.shape or x.shape != step_index.shape:
        raise ValueError(f"x {tuple(x.shape)}, mask {tuple(mask.shape)}, step_index {tuple(step_index.shape)} differ")
    return _MEANS[mode](x, mask.to(x.dtype), step_index)


def agg_units(mask: Tensor, step_index: Tensor, mode: str) -> Tensor:
    """How many units (tokens, steps, sequences) the aggregation `mode` averages over, as a float."""
    _check_mode(mode)
    return _UNITS[mode](mask.float(), step_index).float()


def _token_mean(x: Tensor, mask: Tensor) -> float:
    return float(zero_masked(x, mask).sum() / mask.sum().clamp_min(1.0))


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    step_index: Tensor,
    *,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None,
    agg: str,
    weight: Tensor | None = None,
    guided: Tensor | None = None,
    max_weight: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """PPO clip loss [B, T] -> scalar; stats: clip_frac, dual_clip_frac, approx_kl, ratio_mean, ratio_max.

    weight [B, T] (optional, no gradient) multiplies each token's clipped loss outside the clip: the importance
    weight of a stale sample (algo/offpolicy.py). guided [B] (optional, 1.0 = a gold sample, algo/guided.py):
    those rows' loss is -min(ratio, max_weight) * A instead, unclipped and without `weight` (they have no
    behaviour log-probs to weight by); they count as never clipped. With no row flagged nothing changes."""
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
    if weight is not None:
        loss = loss * weight.detach()
    if guided is not None and bool((guided > 0).any()):
        if max_weight is None:
            raise ValueError("policy_loss: guided rows need max_weight (algo.guided.max_weight)")
        rows = (guided > 0)[:, None].expand_as(loss)
        loss = torch.where(rows, -advantages * guided_weight(log_ratio, max_weight), loss)
        clipped = clipped.masked_fill(rows, 0.0)
        dual = dual.masked_fill(rows, 0.0)
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
    clip: float | None,
    agg: str,
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
    for row, lab in zip(logits, labels, strict=True):
        lg = row.float()
        rows.append(lg.gather(-1, lab[:, None]).squeeze(-1) - torch.logsumexp(lg, dim=-1))
    return torch.stack(rows)
