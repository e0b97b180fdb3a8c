"""Which problems the loop sees: the task from the config, the prompts of each step, the eval set.

Data position is the step index: step s draws its prompts with a seed derived from (seed, s), so a
resumed run continues with exactly the prompts it would have seen, without replaying a sampler.
"""

from __future__ import annotations

import random

from omegaconf import DictConfig


class JsonlTask:
    """prompt/answer rows from JSONL files (GSM8K / MATH style), with the task interface of ArithmeticTask.

    With a tokenizer, every prompt must leave room to generate: at most max_model_len - 2 tokens (vLLM
    rejects a prompt of max_model_len tokens, and one of max_model_len - 1 leaves a single token, not a
    step). An overlong prompt is an error before the run starts, or with skip_bad a skipped, counted row.
    """

    def __init__(self, train_path: str, eval_path: str, skip_bad: bool, tokenizer=None,
                 max_model_len: int | None = None):
        from tasks.datasets import load_jsonl_problems
        self.train, self.train_skipped = load_jsonl_problems(train_path, skip_bad)
        self.eval, self.eval_skipped = load_jsonl_problems(eval_path, skip_bad)
        self.train_overlong = self.eval_overlong = 0
        if tokenizer is not None:
            self.train, self.train_overlong = drop_overlong(self.train, tokenizer, max_model_len, skip_bad)
            self.eval, self.eval_overlong = drop_overlong(self.eval, tokenizer, max_model_len, skip_bad)
            self.train_skipped += self.train_overlong
            self.eval_skipped += self.eval_overlong
        if not self.train or not self.eval:
            raise ValueError(f"no usable rows in {train_path if not self.train else eval_path}")

    def sample(self, n: int, split: str = "train", seed: int | None = None) -> list:
        pool = self.train if split == "train" else self.eval
        if split == "eval":
            return pool[:n]
        rng = random.Random(seed)
        return [pool[rng.randrange(len(pool))] for _ in range(n)]

    @staticmethod
    def prompt_text(problem) -> str:
        return problem.prompt


def drop_overlong(problems: list, tokenizer, max_model_len: int, skip_bad: bool,
                  batch_size: int = 512) -> tuple[list, int]:
    """(problems whose prompt leaves room to generate, number dropped); DatasetError without skip_bad.

    Counted the way the generator tokenizes (tokenizer.encode: special tokens added), in batches."""
    from tasks.datasets import DatasetError
    limit = max_model_len - 2
    kept = []
    for i in range(0, len(problems), batch_size):
        chunk = problems[i:i + batch_size]
        lengths = [len(ids) for ids in tokenizer([p.prompt for p in chunk])["input_ids"]]
        for p, n in zip(chunk, lengths):
            if n <= limit:
                kept.append(p)
            elif not skip_bad:
                raise DatasetError(f"{p.source}: field 'prompt' has {n} tokens with the policy tokenizer; "
                                   f"rollout.max_model_len={max_model_len} leaves no room to generate "
                                   f"(at most {limit} prompt tokens)")
    return kept, len(problems) - len(kept)


def make_task(cfg: DictConfig):
    t = cfg.task
    if t.kind == "jsonl":
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(cfg.model.policy, trust_remote_code=cfg.model.trust_remote_code)
        return JsonlTask(t.train_path, t.eval_path, t.skip_bad_rows, tokenizer, cfg.rollout.max_model_len)
    from tasks.arithmetic import ArithmeticTask
    return ArithmeticTask(min_steps=t.min_steps, max_steps=t.max_steps, modulus=t.modulus,
                          operand_max=t.operand_max, operators=t.operators, seed=cfg.seed)


def step_problems(cfg: DictConfig, task, position: int) -> list:
    """The prompts of the step at data position `position` (0-based)."""
    return task.sample(cfg.rollout.prompts_per_step, "train", seed=cfg.seed * 1_000_003 + position)


def eval_problems(cfg: DictConfig, task) -> list:
    """The fixed held-out set (same for every run with the same task settings)."""
    return task.sample(cfg.eval.num_problems, "eval", seed=12345)
