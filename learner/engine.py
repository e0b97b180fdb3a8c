"""Shared DeepSpeed set-up for every trainable role (policy learner ranks, critic), and the process set-up
every role's actor does first (threads, determinism, RNG state, where its output goes).

ZeRO data parallelism (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion
Parameter Models") with a plain torch AdamW passed in as the client optimizer: DeepSpeed's fused CPU Adam
would need a C++ build on these machines, and `zero_allow_untested_optimizer` lets ZeRO wrap torch's.

Measured on our 2-core CPU machine: DeepSpeed 0.19.8 with DS_ACCELERATOR=cpu and the gloo backend runs
ZeRO-2 and ZeRO-3 on 2 ranks. Each rank is one process (a Ray actor) with one thread.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import sys
from datetime import timedelta

import numpy as np
import torch

# DeepSpeed mixes its own entries into a checkpoint's client state; ours lives under this one key.
CLIENT_KEY = "steprl_client_state"


def save_engine_checkpoint(engine, ckpt_dir: str, client_state: dict) -> None:
    """DeepSpeed engine state (weights, optimizer, scheduler, step) plus our client state."""
    engine.save_checkpoint(str(ckpt_dir), client_state={CLIENT_KEY: dict(client_state)})


def _deepspeed_safe_globals() -> list:
    """The DeepSpeed classes inside its own ZeRO checkpoints (found by loading one with weights_only=True):
    allowing exactly these lets torch's restricted unpickler read the files without running any code."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def _load_weights_only(path: str, map_location=None):
    """DeepSpeed's checkpoint engine loads with weights_only=False (a pickle that may run code); ours does
    not. Installed on every engine we build (build_engine)."""
    with torch.serialization.safe_globals(_deepspeed_safe_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


def load_engine_checkpoint(engine, ckpt_dir: str, who: str) -> dict:
    """Restore what save_engine_checkpoint wrote; returns our client state. Errors name `who`."""
    path, client_state = engine.load_checkpoint(str(ckpt_dir), load_optimizer_states=True,
                                                load_lr_scheduler_states=True)
    if path is None:
        raise FileNotFoundError(f"{who}: no DeepSpeed checkpoint in {ckpt_dir}")
    if CLIENT_KEY not in (client_state or {}):
        raise KeyError(f"{ckpt_dir}: checkpoint has no {CLIENT_KEY!r} client state (not written by steprl?)")
    return client_state[CLIENT_KEY]


def save_rng(path: str) -> None:
    """Python, numpy and torch RNG states of this process as JSON (no pickle: a run's files are data)."""
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    data = {"python": [version, list(state), gauss],
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "torch": torch.get_rng_state().tolist()}
    with open(path, "w") as fh:
        json.dump(data, fh)


def load_rng(path: str) -> None:
    """Restore what save_rng wrote."""
    with open(path) as fh:
        data = json.load(fh)
    version, state, gauss = data["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = data["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(data["torch"], dtype=torch.uint8))


def prepare_process(threads: int, *, log_file: str | None = None, deterministic: bool = False) -> None:
    """What every role's actor does first: output to its log file, `threads` BLAS/OMP threads, and
    deterministic kernels if asked (before any model or engine is built)."""
    _redirect_output(log_file)
    _set_threads(threads)
    _set_determinism(deterministic)


def _set_determinism(on: bool) -> None:
    """Deterministic torch kernels (an op without one raises instead of silently varying). cuBLAS needs
    a fixed workspace for it, set before CUDA starts. Deterministic mode would also fill every new
    uninitialized tensor with NaN, a debugging aid that made the learner step 5x slower on CPU
    (1.1 s -> 5.5 s in `steprl bench`) and changes no result: switched off."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    torch.utils.deterministic.fill_uninitialized_memory = False


def _redirect_output(log_file: str | None) -> None:
    """Append this process's stdout and stderr (file descriptors 1 and 2, so C++ prints too) to log_file.

    vLLM, DeepSpeed and transformers print INFO lines that Ray forwards from every actor to the driver,
    where they bury the progress bar. Errors still reach the driver: a failed call raises there with its
    traceback. None leaves the output where it is.
    """
    if not log_file:
        return
    os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _set_threads(threads: int) -> None:
    """One BLAS/OMP thread per process: two processes with two threads each ran ~6x slower here. Called
    before vLLM starts: its CPU worker then forbids torch.set_num_threads."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    torch.set_num_threads(threads)


def free_port() -> int:
    """A TCP port free right now on this host (the OS picks it; a tiny race remains until it is bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def node_ip() -> str:
    """The address other processes use to reach this host (the Ray node address when Ray is up)."""
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # no Ray in this process: a single-host world
        return "127.0.0.1"


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int, backend: str,
                     timeout_s: float = 600.0) -> None:
    """Join the torch.distributed world DeepSpeed will use (gloo on CPU, nccl on GPU).

    DeepSpeed reads RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT from the environment.
    LOCAL_RANK is 0: under Ray every rank is its own actor and sees only its own GPU (if any).
    Calling it again in a process already in a world of the same size is a no-op.
    """
    import torch.distributed as dist

    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' (CPU) or 'nccl' (GPU), got {backend!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    if dist.is_initialized():
        if dist.get_world_size() != world_size or dist.get_rank() != rank:
            raise RuntimeError(f"this process is already rank {dist.get_rank()} of {dist.get_world_size()}; "
                               f"cannot join as rank {rank} of {world_size}")
        return
    if backend == "gloo":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
    import deepspeed

    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False,
                               timeout=timedelta(seconds=timeout_s), rank=rank, world_size=world_size)


# ---- learning-rate schedules: factor of the peak lr after a linear warm-up (registry, one signature) ----

def _constant(progress: float) -> float:
    return 1.0


def _cosine(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * progress))


SCHEDULES = {"constant": _constant, "cosine": _cosine}


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0 = the first update).

    Warm-up is linear and never uses lr 0: step s < warmup_steps gets (s + 1) / warmup_steps.
    After warm-up the schedule maps progress in [0, 1] over the remaining steps (clamped at 1).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    return SCHEDULES[schedule](min(1.0, (step - warmup_steps) / span))


def ds_config(*, zero_stage: int, micro_batch_size: int, grad_accum: int, grad_clip: float, bf16: bool,
              world_size: int) -> dict:
    """The DeepSpeed JSON config; optimizer and scheduler are passed as objects, not named here."""
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage}")
    if micro_batch_size < 1 or grad_accum < 1:
        raise ValueError(f"micro_batch_size ({micro_batch_size}) and grad_accum ({grad_accum}) must be >= 1")
    zero = {"stage": zero_stage}
    if zero_stage == 3:
        # Gather whole layers at once on tiny models; the defaults assume billions of parameters.
        zero.update(stage3_param_persistence_threshold=0, stage3_gather_16bit_weights_on_model_save=False)
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch_size * grad_accum * world_size,
        "gradient_clipping": grad_clip,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,  # we report our own metrics
        "wall_clock_breakdown": False,
    }


def build_engine(model: torch.nn.Module, *, lr: float, weight_decay: float, warmup_steps: int,
                 total_steps: int, schedule: str, zero_stage: int, micro_batch_size: int, grad_accum: int,
                 grad_clip: float, bf16: bool):
    """Wrap `model` in a DeepSpeed engine with torch AdamW and a warm-up + constant/cosine LambdaLR.

    Call init_distributed first. The scheduler steps once per optimizer update (DeepSpeed steps it).
    """
    import deepspeed
    import torch.distributed as dist

    if not dist.is_initialized():
        raise RuntimeError("build_engine: call init_distributed(...) before building a DeepSpeed engine")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999), eps=1e-8)
    factor = lambda step: lr_factor(step, warmup_steps=warmup_steps, total_steps=total_steps,  # noqa: E731
                                    schedule=schedule)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    config = ds_config(zero_stage=zero_stage, micro_batch_size=micro_batch_size, grad_accum=grad_accum,
                       grad_clip=grad_clip, bf16=bf16, world_size=dist.get_world_size())
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=config)
    engine.checkpoint_engine.load = _load_weights_only
    return engine


def accumulated_step(engine, mini: dict, *, micro_batch_size: int, unit_modes: tuple[str, ...], units_fn,
                     loss_fn) -> tuple[dict, float, float]:
    """One optimizer update on a mini-batch, accumulated over micro-batches with exact weights.

    units_fn(micro) -> [k] aggregation units of the micro-batch per loss term (unit_modes[j] names the
    aggregation of term j); loss_fn(micro, rows, weights) -> (loss, metrics) with weights[j] the share of
    term j this micro-batch holds in the mini-batch over all ranks. Returns the metrics summed over
    micro-batches and ranks (so global values), the pre-clip gradient norm and the lr of this update.
    The accumulation boundary is set by hand: the number of micro-batches may change between calls.
    """
    from learner.batching import all_reduce_sum, batch_size, micro_slices, micro_weight, select

    world = engine.dp_world_size
    slices = micro_slices(batch_size(mini), micro_batch_size)
    local = torch.stack([units_fn(select(mini, s)) for s in slices])            # [n_micro, k]
    total = all_reduce_sum(local.sum(0))
    engine.set_train_batch_size(micro_batch_size * len(slices) * world)        # bookkeeping only
    sums: dict[str, float] = {}
    for i, s in enumerate(slices):
        weights = tuple(micro_weight(local[i, j], total[j], mode) for j, mode in enumerate(unit_modes))
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
    reduced = all_reduce_sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64)).tolist()
    return dict(zip(keys, reduced)), float("nan") if norm is None else float(norm), lr
