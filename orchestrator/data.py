"""Which problems the loop sees: the task from the config, the prompts of each step, the eval set.

Data position is the step index: step s draws its prompts with a seed derived from (seed, s), so a
resumed run continues with exactly the prompts it would have seen, without replaying a sampler.
"""

from __future__ import annotations

import random

from omegaconf import DictConfig


class JsonlTask:
    """prompt/answer rows from JSONL files (GSM8K / MATH style), with the task interface of ArithmeticTask."""

    def __init__(self, train_path: str, eval_path: str, skip_bad: bool):
        from tasks.datasets import load_jsonl_problems
        self.train, self.train_skipped = load_jsonl_problems(train_path, skip_bad)
        self.eval, self.eval_skipped = load_jsonl_problems(eval_path, skip_bad)
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


def make_task(cfg: DictConfig):
    t = cfg.task
    if t.kind == "jsonl":
        return JsonlTask(t.train_path, t.eval_path, t.skip_bad_rows)
    from tasks.arithmetic import ArithmeticTask
    return ArithmeticTask(min_steps=t.min_steps, max_steps=t.max_steps, modulus=t.modulus,
                          operand_max=t.operand_max, operators=t.operators, seed=cfg.seed)


def step_problems(cfg: DictConfig, task, position: int) -> list:
    """The prompts of the step at data position `position` (0-based)."""
    return task.sample(cfg.rollout.prompts_per_step, "train", seed=cfg.seed * 1_000_003 + position)


def eval_problems(cfg: DictConfig, task) -> list:
    """The fixed held-out set (same for every run with the same task settings)."""
    return task.sample(cfg.eval.num_problems, "eval", seed=12345)
