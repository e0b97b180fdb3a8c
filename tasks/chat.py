"""Chat templates for dataset prompts (`task.chat_template`).

An Instruct model was fine-tuned on its chat format: given a bare question it sees text unlike anything it
was trained on, so `task.chat_template: model` wraps every JSONL prompt in the policy tokenizer's own
template (one user message, then the assistant turn opener, add_generation_prompt=True). The templated
text is what the generator tokenizes and what the overlong-prompt check counts; the raw question stays on
the problem (TextProblem.prompt) for the reward sources (see workers/reward.py on why the PRM gets it).

Torch- and transformers-free at import: orchestrator/validate.py reads CHAT_TEMPLATES, and a bad config
must fail before any heavy import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# The values of task.chat_template. The config doc and validation both read this tuple.
CHAT_TEMPLATES = ("none", "model")


def chat_formatter(mode: str, tokenizer: Any = None, tokenizer_dir: str = "") -> Callable[[str], str]:
    """question text -> the text the policy is prompted with, for task.chat_template=mode.

    "model" needs a tokenizer with a chat template; one without is a ValueError naming the field and the
    directory (checked here, once, so it fails before the run starts rather than on the first prompt)."""
    if mode not in CHAT_TEMPLATES:
        raise ValueError(f"task.chat_template: unknown mode {mode!r}; valid: {', '.join(CHAT_TEMPLATES)}")
    if mode == "none":
        return _as_written
    if tokenizer is None:
        raise ValueError("task.chat_template=model needs the policy tokenizer")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"task.chat_template=model: the tokenizer in {tokenizer_dir or '(model.policy)'!r} has no chat "
            "template (tokenizer_config.json / chat_template.jinja); use task.chat_template=none, or a "
            "policy whose tokenizer ships one"
        )

    def templated(question: str) -> str:
        return apply_chat_template(tokenizer, question)

    return templated


def apply_chat_template(tokenizer: Any, question: str) -> str:
    """The tokenizer's chat template around a single user message, ending with the assistant turn opener."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    if not isinstance(text, str):  # transformers types this str | list[...]; with tokenize=False it is str
        raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, not str")
    return text


def _as_written(question: str) -> str:
    return question
