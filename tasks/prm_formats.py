"""Input layouts of process reward models (PRMs), scored in batches: `reward.sources[].format`.

A PRM judges every step of a solution in one forward pass: the steps are laid out after the question with
a marker closing each step, and the probability that the step is correct is read at that marker. Three
public layouts, one class each (registry ``PRM_FORMATS``):

- ``token_classification`` (ours, tasks/models.py ``make_tiny_prm``): a token classifier; question, then
  each step followed by the step delimiter as text; read at the delimiter's last token: sigmoid of the
  logit (num_labels=1) or softmax(logits)[1] (num_labels=2).
- ``step_tag`` (Math-Shepherd, Wang et al. 2312.08935): a causal LM; ``f"{question} {step_1} ки\\n{step_2}
  ки..."``; at each tag "ки" the next-token logits of the good and bad tokens ("+", "-") are softmaxed
  and the good one's probability is the score (their reference code does exactly this over two logits).
- ``separator_head`` (Qwen2.5-Math-PRM, Zhang et al. 2501.07301): a 2-class head read at a separator
  token "<extra_0>" after every step (softmax[1]). The real model is remote code loaded with AutoModel;
  a directory without remote code (our tiny stand-in) is a Qwen2ForTokenClassification(num_labels=2).
  Qwen's reference input is its chat template: system prompt, the question as the user turn, the steps
  (each followed by "<extra_0>") as the assistant turn. We render that when the PRM's tokenizer has a chat
  template, and lay out plain ``question + step_1 <extra_0> step_2 <extra_0> ...`` when it has none.

Every input is built from token ids piece by piece (question, step, marker, ...), so a BPE merge never
crosses a step boundary and the scored positions are known by construction, never searched for in text.
Where a reference implementation encodes the whole text with the tokenizer's defaults, we keep its leading
BOS (Math-Shepherd's Mistral tokenizer adds one; Qwen's adds none).

Scoring is batched: items are sorted by length, cut into chunks of ``batch_size``, right-padded with an
attention mask (right padding leaves every real token's position id unchanged), run on the model's device,
and read back as float32 Python floats. A format is an ``nn.Module`` around its model, so ``.to()``,
``.parameters()`` and forward hooks see the model, and ``forward`` gives the probability at every position.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

# (question, step texts without their delimiter) -> one probability per step
Item = tuple[str, list[str]]

MATH_SHEPHERD_TAG, MATH_SHEPHERD_GOOD, MATH_SHEPHERD_BAD = "ки", "+", "-"
QWEN_PRM_SEPARATOR = "<extra_0>"
# The system prompt of Qwen2.5-Math-PRM's reference usage (its model card); the PRM was trained under it.
QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
_RESPONSE_MARK = "\x00steprl-response\x00"  # placeholder split out of the rendered chat template


def prm_input_ids(
    tokenizer: Any, question: str, steps: list[str], separator: str = "\n"
) -> tuple[list[int], list[int]]:
    """Token ids of question, step 1, separator, step 2, separator, ... and the index of the last
    separator token of each step (the scored positions). Pieces are encoded one by one, so no BPE merge
    can cross a step boundary and the positions are exact."""
    sep_ids = _encode(tokenizer, separator)
    if not sep_ids:
        raise ValueError(f"separator {separator!r} encodes to no tokens")
    ids = _encode(tokenizer, question)
    positions = []
    for step in steps:
        ids += _encode(tokenizer, step) + sep_ids
        positions.append(len(ids) - 1)
    return ids, positions


class PRMFormat(torch.nn.Module, ABC):
    """One PRM layout: how (question, steps) become ids and scored positions, and how a position's
    logits become the probability that its step is correct. Each layout implements the three abstract
    methods; loading, batching and padding are shared here."""

    name: ClassVar[str]
    # The policy's step delimiter is part of this layout (ours); the public layouts bring their own marker.
    uses_step_delimiter: ClassVar[bool] = False

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 8) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"{self.name}: batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        # Padded positions are masked out and never read, so any id pads when the tokenizer has none.
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
        trust_remote_code: bool,
        batch_size: int = 8,
        **options: Any,
    ) -> Self:
        """The PRM in directory ``path`` (model and tokenizer), frozen, in eval mode, on ``device``."""
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        model = cls.load_model(str(path), dtype=dtype, trust_remote_code=trust_remote_code).eval()
        model.requires_grad_(False)
        model.to(device)
        return cls(model, tokenizer, batch_size=batch_size, **options)

    @classmethod
    @abstractmethod
    def load_model(cls, path: str, *, dtype: torch.dtype, trust_remote_code: bool) -> Any:
        """The layout's model class loaded from `path`."""

    @abstractmethod
    def input_ids(self, question: str, steps: list[str]) -> tuple[list[int], list[int]]:
        """Ids of one item and the position read for each of its steps."""

    @abstractmethod
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, T] float32: the probability read at every position (meaningful at the step positions only)."""

    @torch.no_grad()
    def score(self, items: list[Item]) -> list[list[float]]:
        """One probability in [0, 1] per step of every item, in the items' order."""
        built = [self.input_ids(q, steps) if steps else ([], []) for q, steps in items]
        out: list[list[float]] = [[] for _ in items]
        # Similar lengths share a chunk (less padding); an item without steps needs no forward.
        todo = sorted((i for i, (_, steps) in enumerate(items) if steps), key=lambda i: len(built[i][0]))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            probs = self.probabilities([built[i][0] for i in chunk]).cpu()
            for row, i in enumerate(chunk):
                out[i] = [float(p) for p in probs[row, built[i][1]].tolist()]
        return out

    def probabilities(self, seqs: list[list[int]]) -> torch.Tensor:
        """[B, T] float32 probabilities of the id lists `seqs`, right-padded (right padding leaves every real
        token's position id unchanged), on the model's device; differentiable outside `score`."""
        ids = torch.full((len(seqs), max(len(s) for s in seqs)), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        device = next(self.model.parameters()).device
        probs: torch.Tensor = self(input_ids=ids.to(device), attention_mask=mask.to(device))
        return probs.float()


class TokenClassificationPRM(PRMFormat):
    """Ours: a token classifier read at the separator (the step delimiter) that closes each step."""

    name = "token_classification"
    uses_step_delimiter = True

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 8, separator: str = "\n") -> None:
        super().__init__(model, tokenizer, batch_size=batch_size)
        labels = getattr(getattr(model, "config", None), "num_labels", None)
        if labels not in (1, 2, None):
            raise ValueError(f"token_classification PRM: num_labels must be 1 (sigmoid) or 2 (softmax), got {labels}")
        self.separator = separator

    @classmethod
    def load_model(cls, path: str, *, dtype: torch.dtype, trust_remote_code: bool) -> Any:
        return AutoModelForTokenClassification.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)

    def input_ids(self, question: str, steps: list[str]) -> tuple[list[int], list[int]]:
        return prm_input_ids(self.tokenizer, question, steps, self.separator)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return _class_probability(_logits(self.model(input_ids=input_ids, attention_mask=attention_mask)))


class StepTagPRM(PRMFormat):
    """Math-Shepherd: a causal LM; the good token's share of (good, bad) next-token logits at each tag."""

    name = "step_tag"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        batch_size: int = 8,
        step_tag: str = MATH_SHEPHERD_TAG,
        good_token: str = MATH_SHEPHERD_GOOD,
        bad_token: str = MATH_SHEPHERD_BAD,
    ) -> None:
        super().__init__(model, tokenizer, batch_size=batch_size)
        # The tag follows its step after a space (" ки"); the scored position is the tag token itself,
        # the token Math-Shepherd's code finds as tokenizer.encode("ки")[-1].
        self.tag_ids, alone = _encode(tokenizer, " " + step_tag), _encode(tokenizer, step_tag)
        if not self.tag_ids or not alone or self.tag_ids[-1] != alone[-1]:
            raise ValueError(f"step_tag PRM: {step_tag!r} is not a token of its own after a space in this tokenizer")
        self.good_id = _single_id(tokenizer, good_token, "good_token")
        self.bad_id = _single_id(tokenizer, bad_token, "bad_token")
        self.lead = _leading_bos(tokenizer)

    @classmethod
    def load_model(cls, path: str, *, dtype: torch.dtype, trust_remote_code: bool) -> Any:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)

    def input_ids(self, question: str, steps: list[str]) -> tuple[list[int], list[int]]:
        ids = self.lead + _encode(self.tokenizer, question)
        positions = []
        for i, step in enumerate(steps):  # f"{question} {step_1} ки\n{step_2} ки..." as in Math-Shepherd
            ids += _encode(self.tokenizer, (" " if i == 0 else "\n") + step) + self.tag_ids
            positions.append(len(ids) - 1)
        return ids, positions

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = _logits(self.model(input_ids=input_ids, attention_mask=attention_mask))
        pair = logits[..., [self.good_id, self.bad_id]].float()
        return torch.softmax(pair, dim=-1)[..., 0]


class SeparatorHeadPRM(PRMFormat):
    """Qwen2.5-Math-PRM: a 2-class head read at the separator token that follows every step."""

    name = "separator_head"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        batch_size: int = 8,
        separator: str = QWEN_PRM_SEPARATOR,
        system: str | None = QWEN_PRM_SYSTEM,
    ) -> None:
        super().__init__(model, tokenizer, batch_size=batch_size)
        self.sep_id = _single_id(tokenizer, separator, "separator")
        self.system = system
        self.lead = _leading_bos(tokenizer)

    @classmethod
    def load_model(cls, path: str, *, dtype: torch.dtype, trust_remote_code: bool) -> Any:
        # The real PRM maps AutoModel to its remote-code class (Qwen2ForProcessRewardModel); a directory
        # without remote code is a plain token classifier (AutoModel would load it without its head).
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        auto = (
            AutoModel if "AutoModel" in (getattr(config, "auto_map", None) or {}) else AutoModelForTokenClassification
        )
        return auto.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)

    def input_ids(self, question: str, steps: list[str]) -> tuple[list[int], list[int]]:
        before, after = self._wrap(question)
        ids = self.lead + _encode(self.tokenizer, before)
        positions = []
        for step in steps:
            ids += _encode(self.tokenizer, step) + [self.sep_id]
            positions.append(len(ids) - 1)
        # What follows the last separator (the template's end of turn) cannot change a causal model's
        # scores; it is kept so the input is the reference one.
        return ids + _encode(self.tokenizer, after), positions

    def _wrap(self, question: str) -> tuple[str, str]:
        """The text before and after the steps: the chat template's turns, or the plain question."""
        if not getattr(self.tokenizer, "chat_template", None):
            return question, ""
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": _RESPONSE_MARK}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        if not isinstance(text, str) or text.count(_RESPONSE_MARK) != 1:
            raise ValueError("separator_head PRM: the chat template does not render the assistant turn verbatim")
        before, after = text.split(_RESPONSE_MARK)
        return before, after

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = _logits(self.model(input_ids=input_ids, attention_mask=attention_mask))
        if logits.shape[-1] != 2:
            raise ValueError(f"separator_head PRM: the head gives {logits.shape[-1]} classes per token, not 2")
        return _class_probability(logits)


PRM_FORMATS: dict[str, type[PRMFormat]] = {
    cls.name: cls for cls in (TokenClassificationPRM, StepTagPRM, SeparatorHeadPRM)
}


# ------------------------------------------------------------------------------------------ helpers --
def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _single_id(tokenizer: Any, text: str, what: str) -> int:
    ids = _encode(tokenizer, text)
    if len(ids) != 1:
        raise ValueError(f"PRM {what} {text!r} must be a single token of the PRM's tokenizer, got ids {ids}")
    return ids[0]


def _leading_bos(tokenizer: Any) -> list[int]:
    """[bos] when the tokenizer starts every encoded text with it (Llama / Mistral), else []."""
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and list(tokenizer.encode("", add_special_tokens=True))[:1] == [bos] else []


def _logits(output: Any) -> torch.Tensor:
    """Logits of a Hugging Face output; remote-code models may return a plain tuple (logits first)."""
    logits = output.logits if hasattr(output, "logits") else output[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"PRM output has no logits tensor: {type(output).__name__}")
    return logits


def _class_probability(logits: torch.Tensor) -> torch.Tensor:
    """[B, T, 1] -> sigmoid; [B, T, 2] -> softmax[..., 1]; in float32 whatever the model's dtype."""
    if logits.shape[-1] == 1:
        return torch.sigmoid(logits[..., 0].float())
    if logits.shape[-1] == 2:
        return torch.softmax(logits.float(), dim=-1)[..., 1]
    raise ValueError(f"PRM head gives {logits.shape[-1]} values per token; 1 (sigmoid) or 2 (softmax) expected")
