"""What every role's process does first (threads, determinism, where its output goes) and its RNG state.

Used by every actor (generators, reward, critic, reference, learner ranks), by the driver and by SFT, so
each of these is decided in one place.
"""

from __future__ import annotations

import json
import os
import random
import sys

import numpy as np
import torch

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def thread_env(threads: int) -> dict[str, str]:
    """Environment of a process with `threads` BLAS/OMP threads (Ray passes it to every actor it starts).

    One thread per process on small machines: there two processes with two BLAS threads each ran ~6x
    slower than with one thread each. Tokenizer threads and Ray telemetry are off for the same reason."""
    return {
        **{var: str(threads) for var in THREAD_VARS},
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_USAGE_STATS_ENABLED": "0",
    }


def prepare_process(threads: int, *, log_file: str | None = None, deterministic: bool = False) -> None:
    """Output to log_file, `threads` BLAS/OMP threads, and deterministic kernels if asked; call it before
    any model or engine is built (and before vLLM starts: its CPU worker then forbids set_num_threads)."""
    _redirect_output(log_file)
    os.environ.update({var: str(threads) for var in THREAD_VARS})
    torch.set_num_threads(threads)
    _set_determinism(deterministic)


def _set_determinism(on: bool) -> None:
    """Deterministic torch kernels (an op without one raises instead of silently varying). cuBLAS needs
    a fixed workspace for it, set before CUDA starts. Deterministic mode would also fill every new
    uninitialized tensor with NaN, a debugging aid that made the learner step 5x slower on CPU
    (1.1 s -> 5.5 s in `steprl bench`) and changes no result: switched off."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---- where a role's model lives, and in which dtype ----


def role_device(explicit: str | None = None) -> torch.device:
    """The device of this process's model and of every tensor it computes with.

    `explicit` wins (tests, tools). Otherwise a Ray actor that Ray gave a GPU uses it: Ray sets
    CUDA_VISIBLE_DEVICES to the assigned GPU(s), so the first one is cuda:0 (the LOCAL_RANK 0 that
    engine.build.init_distributed gives DeepSpeed). Everything else -- an actor without GPUs, a plain
    process -- runs on the CPU: a process never picks a GPU Ray did not reserve for it.
    Every role (learner ranks, critic, reference, reward) decides its device here and only here."""
    if explicit is not None:
        return torch.device(explicit)
    if _ray_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


def _ray_gpu_ids() -> list:
    try:
        import ray

        return list(ray.get_gpu_ids()) if ray.is_initialized() else []
    except Exception:  # noqa: BLE001 - not inside a Ray worker: no GPU was assigned
        return []


def role_dtype(name: str, device: torch.device) -> torch.dtype:
    """torch dtype of model.dtype (orchestrator.config.DTYPES), refused with a clear error where the
    device has no kernels for it: bfloat16 needs an Ampere-or-newer GPU, or on CPU the AVX-512 / AMX /
    Arm bf16 kernels torch reports through oneDNN (without them bf16 falls back to slow reference code).
    Run on a CPU role before its model is built, so a bad combination fails at start-up, naming the device."""
    dtype = getattr(torch, name)  # the names are orchestrator.config.DTYPES, checked by config validation
    if dtype == torch.bfloat16:
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise RuntimeError(f"model.dtype=bfloat16: GPU {torch.cuda.get_device_name(device)} has no bf16 support")
        if device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            raise RuntimeError(
                "model.dtype=bfloat16: this CPU has no bf16 kernels (needs AVX-512 or AMX on x86, or Arm bf16); "
                f"torch reports capability {torch.backends.cpu.get_cpu_capability()}: use model.dtype=float32"
            )
    return dtype


def save_rng(path: str) -> None:
    """Python, numpy and torch RNG states of this process as JSON (no pickle: a run's files are data)."""
    version, state, gauss = random.getstate()
    np_state = np.random.get_state(legacy=True)  # legacy=True is the default: a tuple for the MT19937 RandomState
    if isinstance(np_state, dict):  # only for a non-MT19937 bit generator, which the global RandomState is not
        raise RuntimeError("numpy's global RNG state is not the legacy MT19937 tuple: cannot save it")
    kind, keys, pos, has_gauss, cached = np_state
    data = {
        "python": [version, list(state), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
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


def ray_restarted() -> bool:
    """True in an actor that Ray re-created after its process died."""
    import ray

    return ray.is_initialized() and ray.get_runtime_context().was_current_actor_reconstructed
