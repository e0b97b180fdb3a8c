"""Reasoning tasks with verifiable answers (and, for arithmetic chains, oracle step labels).

`TASKS` is the registry of task kinds (`task.kind` in a config): name -> a constructor from TaskSettings.
Every task offers sample(n, split, seed) (split: "train", "eval" = the held-out test split, or "validation"
for choosing settings), prompt_text(problem) (the text the policy is prompted with, chat
template included) and question_text(problem) (the question as written, for the reward sources); problems
carry an `answer`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tasks.arithmetic import ArithmeticTask
from tasks.jsonl import JsonlTask


@dataclass(frozen=True)
class TaskSettings:
    """Plain values a task is built from: the config's task section plus what the run adds."""

    kind: str
    seed: int
    min_steps: int
    max_steps: int
    modulus: int
    operand_max: int
    operators: str
    train_path: str | None
    eval_path: str | None
    skip_bad_rows: bool
    tokenizer_dir: str  # the policy's tokenizer: JSONL prompts must fit rollout.max_model_len with it
    max_model_len: int
    trust_remote_code: bool
    chat_template: str = "none"  # task.chat_template (tasks.chat.CHAT_TEMPLATES); jsonl only
    # The validation split (eval.validation_percent / eval.validation_path in a config): none by default.
    validation_percent: int = 0  # arithmetic: hash buckets taken from train
    validation_path: str | None = None  # jsonl: a third file, disjoint from the other two


_CLASSES: dict[str, type[ArithmeticTask] | type[JsonlTask]] = {"arithmetic": ArithmeticTask, "jsonl": JsonlTask}
TASKS: dict[str, Callable[[TaskSettings], Any]] = {kind: cls.from_settings for kind, cls in _CLASSES.items()}
# The kinds whose tasks write a gold solution of every problem (solution_text): what guided samples need
# (algo.guided, orchestrator/guided.py). JSONL rows hold an answer only.
GOLD_SOLUTION_KINDS: tuple[str, ...] = tuple(kind for kind, cls in _CLASSES.items() if hasattr(cls, "solution_text"))


def make_task(settings: TaskSettings) -> Any:
    """The task of kind settings.kind."""
    if settings.kind not in TASKS:
        raise ValueError(f"unknown task kind {settings.kind!r}; valid: {', '.join(TASKS)}")
    return TASKS[settings.kind](settings)
