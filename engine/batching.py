"""Batch plumbing of every model the roles run (learner ranks, critic, reference): row selection, shards,
mini-batches, the forward pass with padding-aware positions, the PPO epochs x mini-batches loop, and one
optimizer update accumulated over micro-batches with exact loss normalisation over micro-batches and ranks.

Why the normalisation: a loss aggregated per micro-batch and then averaged (what a naive gradient
accumulation does) weights a token by 1 / (tokens in its micro-batch), so the update would depend on
how the batch was cut, and a masked sample would still change the others' weights. Instead every
micro-batch term is scaled by (its aggregation units) / (units of the whole mini-batch over all ranks),
so the accumulated gradient is exactly the gradient of the loss aggregated over the global mini-batch
(the invariance "sharded loss == global loss"; tests/engine/test_engine_batching.py checks it
against the gradient of the whole batch, and tests/learner/test_learner_group.py across two ranks).
"""

from __future__ import annotations

import torch
from torch import Tensor

# ---- rows, shards, mini-batches ----


def batch_size(batch: dict) -> int:
    if "input_ids" not in batch:
        raise KeyError(f"batch has no 'input_ids' (keys: {sorted(batch)})")
    return int(batch["input_ids"].shape[0])


def check_rows(batch: dict) -> int:
    """Every value must be a tensor with one row per sample; returns B. Names the offending key."""
    B = batch_size(batch)
    for key, value in batch.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"batch[{key!r}] is {type(value).__name__}, expected a tensor with {B} rows")
        if value.dim() == 0 or value.shape[0] != B:
            raise ValueError(f"batch[{key!r}] has shape {tuple(value.shape)}, expected {B} rows")
    return B


def to_device(batch: dict, device) -> dict:
    """Every tensor of the batch on `device` (a no-op for tensors already there). Batches arrive through
    Ray on the CPU; a role moves them to its model's device before any forward or collective."""
    return {key: value.to(device) for key, value in batch.items()}


def select(batch: dict, rows) -> dict:
    """The sub-batch of `rows` (a slice or an index tensor) of every tensor."""
    return {key: value[rows] for key, value in batch.items()}


def shard(batch: dict, n: int) -> list[dict]:
    """n contiguous equal shards (ZeRO ranks must run the same number of micro-batches)."""
    B = check_rows(batch)
    if n < 1 or B % n:
        raise ValueError(
            f"batch of {B} samples cannot be split into {n} equal shards; "
            f"make the batch size a multiple of the number of learner ranks ({n})"
        )
    size = B // n
    return [select(batch, slice(i * size, (i + 1) * size)) for i in range(n)]


def minibatch_rows(B: int, mini_batches: int, generator: torch.Generator | None = None) -> list[Tensor]:
    """A random permutation of range(B) cut into `mini_batches` equal parts (one optimizer step each)."""
    if mini_batches < 1 or B % mini_batches:
        raise ValueError(f"mini_batches={mini_batches} must divide the per-rank batch of {B} samples")
    perm = torch.randperm(B, generator=generator)
    return list(perm.chunk(mini_batches))


def micro_slices(n: int, micro_batch_size: int) -> list[slice]:
    """Consecutive slices of at most micro_batch_size rows; the last one may be shorter."""
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    return [slice(i, min(i + micro_batch_size, n)) for i in range(0, n, micro_batch_size)]


def trajectory_row(traj) -> tuple[dict, slice]:
    """A one-row batch of a Trajectory's prompt + response and the slice of its response positions."""
    ids = list(traj.prompt_ids) + list(traj.response_ids)
    if not traj.prompt_ids:
        raise ValueError(f"trajectory {traj.uid!r}: empty prompt_ids (position 0 has no log-prob or value)")
    batch = {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
    }
    return batch, slice(len(traj.prompt_ids), len(ids))


# ---- forward ----


def position_ids(attention_mask: Tensor) -> Tensor:
    """0, 1, 2, ... over real tokens whatever the padding side (vLLM numbers a prompt from 0 too)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def forward_logits(model, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """[B, L, V] logits (or [B, L, num_labels] for a token classifier) of an HF model or DS engine.

    Columns after the last real token of every row are not computed: a batch is padded to its longest
    sample, so a micro-batch of shorter ones would spend much of its FLOPs on padding. Masked positions take no
    part in attention, so the outputs at real positions are unchanged; the cut columns get zero logits.
    """
    L = input_ids.shape[1]
    real = attention_mask.bool().any(0).nonzero()
    width = int(real.max()) + 1 if real.numel() else 1
    out = model(
        input_ids=input_ids[:, :width],
        attention_mask=attention_mask[:, :width],
        position_ids=position_ids(attention_mask[:, :width]),
        use_cache=False,
    ).logits
    return out if width == L else torch.nn.functional.pad(out, (0, 0, 0, L - width))


def shift_right(x: Tensor) -> Tensor:
    """[B, T, ...] -> the same shape with row t holding x[:, t-1] and zeros at t=0.

    Used for quantities read at the position *before* token t (its entropy, a value of the state that
    token t is sampled from), matching the log-prob convention of algo.batch.shift_logprobs.
    """
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)


# ---- exact normalisation over micro-batches and ranks ----


def micro_weight(units: Tensor, global_units: Tensor) -> float:
    """Scale of one micro-batch's aggregated term so that the terms sum to the global aggregate."""
    g = float(global_units)
    return float(units) / g if g > 0 else 0.0


def all_reduce_sum(x: Tensor, device=None) -> Tensor:
    """Sum over the ranks of the default torch.distributed world (identity without one), computed on
    `device` (default: x's own) and returned there. NCCL reduces only CUDA tensors, so DeepSpeed callers
    pass the engine's device."""
    return _all_reduce(x, device, "SUM")


def all_reduce_max(x: Tensor, device=None) -> Tensor:
    """Elementwise max over the ranks, otherwise as all_reduce_sum (a statistic that does not add up)."""
    return _all_reduce(x, device, "MAX")


def _all_reduce(x: Tensor, device, op: str) -> Tensor:
    import torch.distributed as dist

    x = x if device is None else x.to(device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        x = x.clone()
        dist.all_reduce(x, op=getattr(dist.ReduceOp, op))
    return x


# ---- optimizer updates ----


def accumulated_step(engine, mini: dict, *, micro_batch_size: int, units_fn, loss_fn) -> tuple[dict, float, float]:
    """One optimizer update on a mini-batch, accumulated over micro-batches with exact weights.

    units_fn(micro) -> [k] aggregation units of the micro-batch per loss term (algo.losses.agg_units);
    loss_fn(micro, rows, weights) -> (loss, metrics) with rows the micro-batch's row indices in the mini-batch
    (a tensor) and weights[j] the share of term j this micro-batch holds in the mini-batch over all ranks.
    Returns the metrics summed over micro-batches and ranks (so global values), the pre-clip gradient norm and
    the lr of this update.
    The accumulation boundary is set by hand: the number of micro-batches may change between calls.
    """
    world = engine.dp_world_size
    # Micro-batches of similar lengths (rows sorted by length, a stable order): each is padded only to its
    # own longest row (forward_logits). The weights keep the update that of the whole mini-batch.
    order = mini["attention_mask"].sum(-1).argsort(stable=True)
    slices = [order[s] for s in micro_slices(batch_size(mini), micro_batch_size)]
    local = torch.stack([units_fn(select(mini, s)) for s in slices])  # [n_micro, k]
    total = all_reduce_sum(local.sum(0), engine.device)
    engine.set_train_batch_size(micro_batch_size * len(slices) * world)  # bookkeeping only
    sums: dict[str, float] = {}
    for i, s in enumerate(slices):
        weights = tuple(micro_weight(local[i, j], total[j]) for j in range(len(total)))
        loss, metrics = loss_fn(select(mini, s), s, weights)
        engine.set_gradient_accumulation_boundary(i == len(slices) - 1)
        # DeepSpeed averages gradients over ranks; the weights already make the sum global.
        engine.backward(loss * world, scale_wrt_gas=False)
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + v
    lr = float(engine.get_lr()[0])  # the lr of this update: the scheduler advances inside step()
    engine.step()
    norm = engine.get_global_grad_norm()
    keys = sorted(sums)
    reduced = all_reduce_sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64), engine.device).tolist()
    return dict(zip(keys, reduced, strict=True)), float("nan") if norm is None else float(norm), lr


def epochs_of_updates(batch: dict, *, epochs: int, mini_batches: int, update, keys: tuple[str, ...]) -> dict:
    """PPO's loop: `epochs` passes over the batch, each cut into `mini_batches` shuffled mini-batches with
    one optimizer update each. update(mini, rows) -> (metrics, grad_norm, lr). Returns the metrics `keys`
    averaged over the updates (0 for a key an update did not report), the mean grad_norm and the last lr."""
    sums, norms, lr = dict.fromkeys(keys, 0.0), [], float("nan")
    for _ in range(epochs):
        for rows in minibatch_rows(batch_size(batch), mini_batches):
            stats, norm, lr = update(select(batch, rows), rows)
            for k in keys:
                sums[k] += stats.get(k, 0.0)
            norms.append(norm)
    n = len(norms)
    return {**{k: v / n for k, v in sums.items()}, "grad_norm": sum(norms) / n, "lr": lr}
