"""Byte-level BPE tokenizer trained locally on task text, saved as a real Hugging Face tokenizer.

Why this exact pipeline: in transformers 5, ``AutoTokenizer`` picks the tokenizer class from the model
type (``Qwen2Tokenizer`` for our qwen2 models) and rebuilds the normalizer and pre-tokenizer from that
class, keeping only our vocabulary and merges. vLLM loads tokenizers the same way.
So we train with the very pipeline Qwen2Tokenizer rebuilds (NFC, Qwen2's split regex, ByteLevel without
its own regex, ByteLevel decoder): the learner, the generators and this trainer then produce identical
ids by construction, and every byte (the "\\n" step delimiter included) round-trips.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


def _pipeline(tok: Tokenizer) -> Tokenizer:
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe_tokenizer(texts: list[str], vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts``. All 256 bytes are in the vocabulary, so any text encodes.

    ids 0 and 1 are EOS and PAD. Qwen2's split regex isolates every digit, so merges stay small
    (" -", "=\\n", ...) and each digit remains its own token, which is what arithmetic wants.
    """
    if vocab_size < 258:
        raise ValueError(f"vocab_size must be >= 258 (256 bytes + eos + pad), got {vocab_size}")
    if not texts:
        raise ValueError("train_bpe_tokenizer: texts is empty")
    tok = _pipeline(Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)


def task_tokenizer(task: Any, n_texts: int = 2000, vocab_size: int = 300, seed: int = 0) -> PreTrainedTokenizerFast:
    """A tokenizer trained on ``n_texts`` prompts + gold solutions of ``task`` (fixed seed)."""
    problems = task.sample(n_texts, "train", seed=seed)
    return train_bpe_tokenizer([task.prompt_text(p) + task.solution_text(p) for p in problems], vocab_size)


def load_tokenizer(model_dir: str | Path) -> Any:
    """Load the way vLLM does (AutoTokenizer), left padding for batched generation."""
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if tok.eos_token_id is None or tok.pad_token_id is None:
        raise ValueError(
            f"{model_dir}: tokenizer needs eos and pad tokens (eos={tok.eos_token!r}, pad={tok.pad_token!r})"
        )
    tok.padding_side = "left"
    return tok
