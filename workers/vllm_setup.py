"""What a vLLM engine needs around its start: the environment it reads, the checkpoint's tensor names and
shapes (every weight update is checked against them), and the bytes of every token (step splitting on ids)."""

from __future__ import annotations

import os
from pathlib import Path

from algo.segment import byte_level_token_bytes


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
