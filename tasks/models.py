"""Tiny Qwen2 models for the CPU demo: policy, critic (value head) and process reward model.

Each factory writes an ordinary model directory (config.json, model.safetensors in float32, tokenizer
files) that ``transformers`` Auto classes load from disk and, for the policy, that vLLM serves. Head size
is hidden/heads = 32 by default, one of vLLM's CPU attention sizes (32, 64, 80, 96, ...).

The PRM follows the token-classification layout of Qwen2.5-Math-PRM (Zhang et al. 2501.07301): a score
at the separator that closes each step. ``num_labels=1`` reads sigmoid(logit); ``num_labels=2`` reads
softmax(logits)[1]. Its input is built step by step from token ids (question, step 1, separator,
step 2, separator, ...), so the scored positions are exact by construction, never found by re-search.
Stand-ins for the public PRM layouts of tasks/prm_formats.py (scored there, in batches):
``make_tiny_step_tag_prm`` (Math-Shepherd, Wang et al. 2312.08935: a causal LM and a step tag token) and
``make_tiny_separator_prm`` (Qwen2.5-Math-PRM, 2501.07301: a 2-class head at a "<extra_0>" separator).

``hf_generate`` is the plain Hugging Face generator (batched, left padding) used for evaluation and to
check that vLLM decodes the same text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForTokenClassification,
    GenerationConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2ForTokenClassification,
)

from tasks.prm_formats import (
    MATH_SHEPHERD_BAD,
    MATH_SHEPHERD_GOOD,
    MATH_SHEPHERD_TAG,
    QWEN_PRM_SEPARATOR,
    TokenClassificationPRM,
)
from tasks.prm_formats import prm_input_ids as prm_input_ids  # re-exported: its callers import it from here
from tasks.tokenizer import load_tokenizer

VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def tiny_qwen2_config(
    vocab_size: int,
    eos_id: int,
    pad_id: int,
    *,
    hidden: int = 128,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    max_positions: int = 512,
) -> Qwen2Config:
    if hidden % heads:
        raise ValueError(f"hidden={hidden} must be divisible by heads={heads}")
    if heads % kv_heads:
        raise ValueError(f"heads={heads} must be divisible by kv_heads={kv_heads}")
    if hidden // heads not in VLLM_CPU_HEAD_SIZES:
        raise ValueError(
            f"head size hidden/heads = {hidden // heads} is not one vLLM's CPU attention "
            f"supports {VLLM_CPU_HEAD_SIZES}; change hidden={hidden} or heads={heads}"
        )
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate or 3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        use_cache=True,
        # Value heads and PRMs must be deterministic in train mode too. A Qwen2 field that the stubs omit.
        classifier_dropout=0.0,  # type: ignore[call-arg]
        dtype="float32",
    )


def save_model_dir(model: Any, tokenizer: Any, out_dir: str | Path) -> Path:
    """Write model (float32 safetensors) + tokenizer (+ generation config for causal LMs)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def make_tiny_policy(
    out_dir: str | Path,
    tokenizer: Any,
    *,
    hidden: int = 128,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    max_positions: int = 512,
    seed: int = 0,
) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 causal LM saved to ``out_dir`` with ``tokenizer``; returns the model."""
    cfg = tiny_qwen2_config(
        len(tokenizer),
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        intermediate=intermediate,
        max_positions=max_positions,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg).float()
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    save_model_dir(model, tokenizer, out_dir)
    return model


def _token_classifier_from(policy_dir: str | Path, num_labels: int, seed: int) -> Qwen2ForTokenClassification:
    """Qwen2 token classifier with the policy's backbone weights and a zero-initialised score head
    (zero head: the initial critic predicts 0 and the initial PRM 0.5, instead of noise)."""
    policy = AutoModelForCausalLM.from_pretrained(str(policy_dir), dtype=torch.float32)
    fields = {k: v for k, v in policy.config.to_dict().items() if k not in ("id2label", "label2id")}
    cfg = Qwen2Config.from_dict(
        {
            **fields,
            "num_labels": num_labels,
            "classifier_dropout": 0.0,
            "tie_word_embeddings": False,
            "architectures": None,
        }
    )
    torch.manual_seed(seed)
    model = Qwen2ForTokenClassification(cfg).float()
    model.model.load_state_dict(policy.model.state_dict(), strict=True)  # raises on any mismatch
    torch.nn.init.zeros_(model.score.weight)
    torch.nn.init.zeros_(model.score.bias)
    return model


def make_tiny_critic(out_dir: str | Path, policy_dir: str | Path, seed: int = 0) -> Qwen2ForTokenClassification:
    """Value model: the policy backbone + a scalar head per token (num_labels=1)."""
    model = _token_classifier_from(policy_dir, 1, seed)
    save_model_dir(model, load_tokenizer(policy_dir), out_dir)
    return model


def make_tiny_prm(
    out_dir: str | Path,
    *,
    policy_dir: str | Path | None = None,
    tokenizer: Any = None,
    num_labels: int = 1,
    hidden: int = 128,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
) -> Qwen2ForTokenClassification:
    """A PRM scoring each step separator. From ``policy_dir``'s backbone if given (the usual start for
    PRM training), else random with ``tokenizer``. Untrained: it scores 0.5 everywhere until trained."""
    if num_labels not in (1, 2):
        raise ValueError(f"make_tiny_prm: num_labels must be 1 (sigmoid) or 2 (softmax), got {num_labels}")
    if policy_dir is not None:
        model, tokenizer = _token_classifier_from(policy_dir, num_labels, seed), load_tokenizer(policy_dir)
    elif tokenizer is not None:
        cfg = tiny_qwen2_config(
            len(tokenizer),
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
            hidden=hidden,
            layers=layers,
            heads=heads,
            kv_heads=kv_heads,
        )
        cfg.num_labels, cfg.tie_word_embeddings = num_labels, False
        torch.manual_seed(seed)
        model = Qwen2ForTokenClassification(cfg).float()
    else:
        raise ValueError("make_tiny_prm: give policy_dir or tokenizer")
    save_model_dir(model, tokenizer, out_dir)
    return model


def make_tiny_step_tag_prm(
    out_dir: str | Path,
    policy_dir: str | Path,
    *,
    step_tag: str = MATH_SHEPHERD_TAG,
    good_token: str = MATH_SHEPHERD_GOOD,
    bad_token: str = MATH_SHEPHERD_BAD,
    seed: int = 0,
) -> Qwen2ForCausalLM:
    """A Math-Shepherd-layout PRM (tasks.prm_formats.StepTagPRM): the policy, a causal LM, with the step
    tag added to its tokenizer as one token and the embeddings resized. Math-Shepherd fine-tunes an LM,
    so the untrained stand-in is the policy itself: its "+"/"-" logits at each tag give the scores."""
    model = Qwen2ForCausalLM.from_pretrained(str(policy_dir), dtype=torch.float32)
    tokenizer = load_tokenizer(policy_dir)
    tokenizer.add_tokens([step_tag])
    for token in (step_tag, good_token, bad_token):
        if len(tokenizer.encode(token, add_special_tokens=False)) != 1:
            raise ValueError(f"make_tiny_step_tag_prm: {token!r} is not a single token of {policy_dir}")
    torch.manual_seed(seed)  # the new embedding row is sampled around the mean of the others
    model.resize_token_embeddings(len(tokenizer))
    save_model_dir(model, tokenizer, out_dir)
    return model


def make_tiny_separator_prm(
    out_dir: str | Path,
    policy_dir: str | Path,
    *,
    separator: str = QWEN_PRM_SEPARATOR,
    chat_template: str | None = None,
    seed: int = 0,
) -> Qwen2ForTokenClassification:
    """A Qwen2.5-Math-PRM-layout stand-in (tasks.prm_formats.SeparatorHeadPRM): the policy backbone with
    a zero 2-class head (0.5 everywhere until trained), the separator added as one special token and the
    embeddings resized. ``chat_template`` (a Jinja string) is stored with the tokenizer if given: the
    format then wraps the question and steps in it, as Qwen's reference usage does."""
    model = _token_classifier_from(policy_dir, 2, seed)
    tokenizer = load_tokenizer(policy_dir)
    tokenizer.add_tokens([separator], special_tokens=True)
    torch.manual_seed(seed)
    model.resize_token_embeddings(len(tokenizer))
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    save_model_dir(model, tokenizer, out_dir)
    return model


@torch.no_grad()
def prm_step_scores(model: Any, tokenizer: Any, question: str, steps: list[str], separator: str = "\n") -> list[float]:
    """One score in [0, 1] per step: the PRM's probability that the step is correct (one item of
    tasks.prm_formats.TokenClassificationPRM, which scores many in batches)."""
    return TokenClassificationPRM(model, tokenizer, separator=separator).score([(question, steps)])[0]


def load_policy(model_dir: str | Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)


def load_token_classifier(model_dir: str | Path) -> Any:
    return AutoModelForTokenClassification.from_pretrained(str(model_dir), dtype=torch.float32)


@torch.no_grad()
def hf_generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    n: int,
    temperature: float,
    max_new_tokens: int,
    batch_size: int = 64,
) -> list[list[str]]:
    """n completions per prompt with HF generate (left padding). Text stops before the first EOS;
    nothing else is stripped, so a stray special token shows up in the text (and fails the oracle)."""
    if tokenizer.padding_side != "left":
        raise ValueError("hf_generate needs tokenizer.padding_side == 'left' (use tasks.tokenizer.load_tokenizer)")
    greedy = temperature <= 0
    out: list[list[str]] = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        # Pure sampling: HF would otherwise apply its global default top_k=50 (vLLM's default is off).
        sampling = {} if greedy else {"temperature": temperature, "top_k": 0, "top_p": 1.0}
        gen = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=not greedy,
            **sampling,
            num_return_sequences=1 if greedy else n,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        new = gen[:, enc["input_ids"].shape[1] :].tolist()
        texts = [tokenizer.decode(_until_eos(ids, tokenizer.eos_token_id), skip_special_tokens=False) for ids in new]
        per = 1 if greedy else n
        out += [texts[j * per : (j + 1) * per] * (n if greedy else 1) for j in range(len(chunk))]
    return out


def _until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids
