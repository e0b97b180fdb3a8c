"""JsonlTask: prompt/answer rows from JSONL files (GSM8K / MATH style), with the interface of ArithmeticTask."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tasks.chat import chat_formatter
from tasks.datasets import DatasetError, TextProblem, load_jsonl_problems

if TYPE_CHECKING:
    from tasks import TaskSettings


class JsonlTask:
    """Train and eval problems from two JSONL files, and validation problems from an optional third one.

    The validation file must share no prompt with the other two (checked when it is read): settings chosen on
    it must not have been trained on, nor be the ones the test numbers are reported on.

    With a tokenizer, every prompt must leave room to generate: at most max_model_len - 2 tokens (vLLM
    rejects a prompt of max_model_len tokens, and one of max_model_len - 1 leaves a single token, not a
    step). An overlong prompt is an error before the run starts, or with skip_bad a skipped, counted row.

    chat_template="model" (task.chat_template) prompts the policy with each question inside the tokenizer's
    chat template (tasks/chat.py): prompt_text gives that text, and lengths are counted on it;
    question_text keeps the question as written.
    """

    def __init__(
        self,
        train_path: str,
        eval_path: str,
        skip_bad: bool,
        tokenizer: Any = None,
        max_model_len: int | None = None,
        chat_template: str = "none",
        tokenizer_dir: str = "",
        validation_path: str | None = None,
    ) -> None:
        # Checked before the files are read: a template-less tokenizer fails fast, naming the field.
        self.format_prompt = chat_formatter(chat_template, tokenizer, tokenizer_dir)
        paths = {"train": train_path, "eval": eval_path}
        if validation_path is not None:
            paths["validation"] = validation_path
        loaded = {split: load_jsonl_problems(path, skip_bad) for split, path in paths.items()}
        self.pools = {split: rows for split, (rows, _) in loaded.items()}  # split -> its problems
        self.skipped = {split: n for split, (_, n) in loaded.items()}  # split -> rows skipped
        if tokenizer is not None:
            if max_model_len is None:
                raise ValueError("JsonlTask: a tokenizer needs max_model_len to check prompt lengths")
            fmt = None if chat_template == "none" else self.format_prompt
            for split in paths:
                self.pools[split], overlong = drop_overlong(self.pools[split], tokenizer, max_model_len, skip_bad, fmt)
                self.skipped[split] += overlong
        empty = [path for split, path in paths.items() if not self.pools[split]]
        if empty:
            raise ValueError(f"no usable rows in {empty[0]}")
        self.train, self.eval = self.pools["train"], self.pools["eval"]
        self.train_skipped, self.eval_skipped = self.skipped["train"], self.skipped["eval"]
        self.validation_skipped = self.skipped.get("validation", 0)
        if validation_path is not None:
            check_disjoint(self.pools["validation"], self.train + self.eval, validation_path)

    @classmethod
    def from_settings(cls, s: TaskSettings) -> JsonlTask:
        if not s.train_path or not s.eval_path:
            raise ValueError("task.kind=jsonl needs task.train_path and task.eval_path")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(s.tokenizer_dir, trust_remote_code=s.trust_remote_code)
        return cls(
            s.train_path,
            s.eval_path,
            s.skip_bad_rows,
            tokenizer,
            s.max_model_len,
            s.chat_template,
            s.tokenizer_dir,
            validation_path=s.validation_path,
        )

    def sample(self, n: int, split: str = "train", seed: int | None = None) -> list[TextProblem]:
        """Train: n rows drawn with replacement (seeded). Eval and validation: the file's first n rows, a
        fixed set whatever the seed."""
        if split not in self.pools:
            if split == "validation":
                raise ValueError("task.kind=jsonl has no validation split: set eval.validation_path to a JSONL file")
            raise ValueError(f"split must be one of {', '.join(self.pools)}, got {split!r}")
        pool = self.pools[split]
        if split != "train":
            return pool[:n]
        rng = random.Random(seed)
        return [pool[rng.randrange(len(pool))] for _ in range(n)]

    def prompt_text(self, problem: TextProblem) -> str:
        """The text the policy is prompted with: the question inside task.chat_template's template."""
        return self.format_prompt(problem.prompt)

    @staticmethod
    def question_text(problem: TextProblem) -> str:
        """The question as written in the data, before any chat template (what the reward sources get)."""
        return problem.prompt


def check_disjoint(validation: list[TextProblem], others: list[TextProblem], path: str) -> None:
    """DatasetError naming the first validation row whose prompt is also a train or eval prompt."""
    seen = {p.prompt for p in others}
    for p in validation:
        if p.prompt in seen:
            raise DatasetError(
                f"{p.source or path}: this validation prompt is also in the train or eval file; the validation "
                f"split must be disjoint from both: {p.prompt[:80]!r}"
            )


def drop_overlong(
    problems: list[TextProblem],
    tokenizer: Any,
    max_model_len: int,
    skip_bad: bool,
    format_prompt: Callable[[str], str] | None = None,
    batch_size: int = 512,
) -> tuple[list[TextProblem], int]:
    """(problems whose prompt leaves room to generate, number dropped); DatasetError without skip_bad.

    Counted on the text the generator is given (format_prompt(prompt): the chat template adds tokens, and
    a prompt that fits bare can overflow templated) and the way it tokenizes it (tokenizer.encode: special
    tokens added), in batches."""
    fmt = format_prompt or (lambda text: text)
    limit = max_model_len - 2
    kept = []
    for i in range(0, len(problems), batch_size):
        chunk = problems[i : i + batch_size]
        lengths = [len(ids) for ids in tokenizer([fmt(p.prompt) for p in chunk])["input_ids"]]
        for p, n in zip(chunk, lengths, strict=True):
            if n <= limit:
                kept.append(p)
            elif not skip_bad:
                templated = " (with task.chat_template)" if format_prompt is not None else ""
                raise DatasetError(
                    f"{p.source}: field 'prompt' has {n} tokens with the policy tokenizer{templated}; "
                    f"rollout.max_model_len={max_model_len} leaves no room to generate "
                    f"(at most {limit} prompt tokens)"
                )
    return kept, len(problems) - len(kept)
