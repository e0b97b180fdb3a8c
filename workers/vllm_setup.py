"""What a vLLM engine needs around it: the environment it reads, the checkpoint's tensor names and shapes (every
weight update is checked against them), the bytes of every token (step splitting on ids), and the checks of a
sampling call's arguments."""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from algo.segment import byte_level_token_bytes
from algo.trajectory import PromptRequest


def set_vllm_env(on_cpu: bool) -> None:
    """Environment vLLM reads at engine start; must be set before the engine is built."""
    # In-process engine: collective_rpc then hands tensors to the worker by reference (a separate
    # engine process cannot receive them).
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if on_cpu:
        # The legacy whole-GiB VLLM_CPU_KVCACHE_SPACE overrides kv_cache_memory_bytes: drop it so
        # kv_cache_gb (passed as bytes) is what the engine gets.
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)


def checkpoint_shapes(model_dir: str) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in the model's safetensors files (what load_weights must get)."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors file (the generator loads HF safetensors)")
    shapes = {}
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            for name in handle.keys():
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes


def token_bytes_table(tokenizer, vocab_size: int) -> list[bytes]:
    """Raw bytes of every token id < vocab_size, for algo.segment.split_steps (built once).

    Byte-level BPE tokens are mapped through the byte alphabet (a token may hold part of a UTF-8
    character); other tokenizers fall back to decoding each id alone. Special tokens and ids the
    tokenizer does not know (padded model vocabularies) map to b"".
    """
    from tokenizers import decoders

    known = len(tokenizer)
    specials = set(tokenizer.all_special_ids)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if isinstance(getattr(backend, "decoder", None), decoders.ByteLevel):
        table = byte_level_token_bytes(tokenizer.convert_ids_to_tokens(list(range(known))), specials)
    else:
        table = [b"" if i in specials else tokenizer.decode([i]).encode("utf-8") for i in range(known)]
    return table + [b""] * max(0, vocab_size - known)


def check_sampling(
    requests: Sequence[PromptRequest], n: int, temperature: float, top_p: float, max_tokens: int
) -> None:
    """The arguments of a sampling call, checked before anything reaches the engine (errors name the field)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    counts = Counter((r.group_id, r.prompt_id) for r in requests)
    dupes = sorted(k for k, c in counts.items() if c > 1)
    if dupes:
        raise ValueError(f"requests repeat (group_id, prompt_id) {dupes}: ask for more samples with n")
    for r in requests:
        if r.samples is not None and (len(set(r.samples)) != len(r.samples) or not all(0 <= i < n for i in r.samples)):
            raise ValueError(f"prompt_id={r.prompt_id!r}: samples {r.samples} must be distinct indices in [0, {n})")
