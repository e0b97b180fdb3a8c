"""DeepSpeed for every trained model (policy learner ranks, critic, and any model trained the same way):
the distributed world, the engine with its optimizer and lr schedule, and checkpoints.

ZeRO data parallelism (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion
Parameter Models") with a plain torch AdamW passed in as the client optimizer: DeepSpeed's fused CPU Adam
would need a C++ build on these machines, and `zero_allow_untested_optimizer` lets ZeRO wrap torch's.

Measured on our 2-core CPU machine: DeepSpeed 0.19.8 with DS_ACCELERATOR=cpu and the gloo backend runs
ZeRO-2 and ZeRO-3 on 2 ranks, in float32 and in bf16 (an AMD EPYC with AVX-512 bf16; see
engine.process.role_dtype for the CPUs that can). Each rank is one process (a Ray actor) with one thread.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

from algo.schedules import lr_factor
from engine.process import load_rng, save_rng

# DeepSpeed mixes its own entries into a checkpoint's client state; ours lives under this one key.
CLIENT_KEY = "steprl_client_state"


def save_checkpoint(engine, ckpt_dir: str, client_state: dict, rng_file: str) -> None:
    """DeepSpeed engine state (weights, optimizer, scheduler, step), our client state, and this process's
    RNG state as ckpt_dir/rng_file. Every rank of a world calls it with the same directory."""
    engine.save_checkpoint(str(ckpt_dir), client_state={CLIENT_KEY: dict(client_state)})
    save_rng(str(Path(ckpt_dir) / rng_file))


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


def load_checkpoint(engine, ckpt_dir: str, rng_file: str, who: str) -> dict:
    """Restore what save_checkpoint wrote; returns our client state. Errors name `who`."""
    path, client_state = engine.load_checkpoint(
        str(ckpt_dir), load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if path is None:
        raise FileNotFoundError(f"{who}: no DeepSpeed checkpoint in {ckpt_dir}")
    if CLIENT_KEY not in (client_state or {}):
        raise KeyError(f"{ckpt_dir}: checkpoint has no {CLIENT_KEY!r} client state (not written by steprl?)")
    rng = Path(ckpt_dir) / rng_file
    if not rng.exists():
        raise FileNotFoundError(f"{who}: missing RNG state {rng}")
    load_rng(str(rng))
    return client_state[CLIENT_KEY]


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


def init_distributed(
    rank: int, world_size: int, master_addr: str, master_port: int, backend: str, timeout_s: float = 600.0
) -> None:
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
            raise RuntimeError(
                f"this process is already rank {dist.get_rank()} of {dist.get_world_size()}; "
                f"cannot join as rank {rank} of {world_size}"
            )
        return
    if backend == "gloo":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK="0",
        LOCAL_WORLD_SIZE="1",
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
    )
    import deepspeed

    deepspeed.init_distributed(
        dist_backend=backend,
        auto_mpi_discovery=False,
        verbose=False,
        timeout=timedelta(seconds=timeout_s),
        rank=rank,
        world_size=world_size,
    )


def ds_config(
    *, zero_stage: int, micro_batch_size: int, grad_accum: int, grad_clip: float, bf16: bool, world_size: int
) -> dict:
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


@dataclass(frozen=True)
class TrainSettings:
    """How one model is trained: the same fields for the policy, the critic and any other model trained
    with DeepSpeed (built once from the config by the driver)."""

    lr: float  # peak learning rate (AdamW)
    weight_decay: float
    warmup_steps: int  # linear warm-up, in optimizer updates
    total_steps: int  # optimizer updates of the whole run (the schedule's length)
    schedule: str  # algo.schedules.SCHEDULES
    grad_clip: float
    zero_stage: int
    micro_batch_size: int  # samples per forward / backward on a rank
    epochs: int  # passes over each batch (PPO epochs)
    mini_batches: int  # optimizer updates per pass
    bf16: bool


def engine_config(train: TrainSettings) -> dict:
    """The DeepSpeed config of an engine of `train` in the current world (after init_distributed)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        raise RuntimeError("call init_distributed(...) before building a DeepSpeed model or engine")
    return ds_config(
        zero_stage=train.zero_stage,
        micro_batch_size=train.micro_batch_size,
        grad_accum=1,  # accumulated_step sets the accumulation boundary itself
        grad_clip=train.grad_clip,
        bf16=train.bf16,
        world_size=dist.get_world_size(),
    )


@contextmanager
def model_init_context(train: TrainSettings) -> Iterator[None]:
    """Wrap the from_pretrained of a model that build_engine(model, train) will train.

    Under ZeRO-3 each rank should only ever hold its partition of the weights; built the plain way, every
    rank first materialises a whole fp32 copy (for a 1.5B policy, 6 GB per rank before any partitioning).
    transformers builds the model inside deepspeed.zero.Init(config_dict_or_path=<this DeepSpeed config>)
    and loads the checkpoint into the partitions while an HfDeepSpeedConfig of a ZeRO-3 config (here its
    two members, _Zero3Config) is registered: so it is registered exactly as long as the construction (a bare
    zero.Init around from_pretrained would leave transformers loading weights into empty partitions).
    Other stages: nothing to do.
    """
    if train.zero_stage != 3:
        yield
        return
    from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

    hf_config = _Zero3Config(engine_config(train))  # transformers keeps only a weak reference: hold it here
    set_hf_deepspeed_config(hf_config)
    try:
        yield
    finally:
        unset_hf_deepspeed_config()  # later loads in this process are plain again
        del hf_config


class _Zero3Config:
    """What transformers reads of an HfDeepSpeedConfig while loading (is_zero3(), .config). Its own class
    needs `accelerate`, a dependency for these two members only."""

    def __init__(self, config: dict):
        self.config = config

    def is_zero3(self) -> bool:
        return self.config["zero_optimization"]["stage"] == 3


def build_engine(model: torch.nn.Module, train: TrainSettings, device: torch.device | None = None):
    """Wrap `model` in a DeepSpeed engine with torch AdamW and a warm-up + constant/cosine LambdaLR.

    Call init_distributed first. The scheduler steps once per optimizer update (DeepSpeed steps it).
    DeepSpeed moves the model to its accelerator's device; with `device` (the role's, engine.process.
    role_device) a disagreement -- e.g. a CPU role whose DeepSpeed found a GPU -- is an error here rather
    than a device mismatch in the first forward.
    """
    import deepspeed

    config = engine_config(train)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay, betas=(0.9, 0.999), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(
            step, warmup_steps=train.warmup_steps, total_steps=train.total_steps, schedule=train.schedule
        ),
    )
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
    engine.checkpoint_engine.load = _load_weights_only
    if device is not None and torch.device(engine.device).type != device.type:
        raise RuntimeError(
            f"DeepSpeed placed the model on {engine.device} but this role runs on {device} "
            "(DS_ACCELERATOR=cpu on CPU roles; a GPU role needs a GPU from Ray)"
        )
    return engine
