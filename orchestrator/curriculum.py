"""A pass-rate curriculum over chain length (task.curriculum, arithmetic tasks).

Training starts on chains of at most levels[0] operations. Every `every` steps the policy's greedy accuracy on
`num_problems` validation-split problems of the current level is measured; at `threshold` or above, the next
steps draw their prompts at the next level. The decision is taken on the validation split, never on the test
split: the reported test numbers must not be tuned on. Evaluation on eval.split keeps task.max_steps.

Check steps are barriers of the loop (nothing generated ahead), so the batch after a check is drawn at the level
just decided; the level is part of the checkpoint's driver state, so a resumed run draws the same prompts.
The logic here needs no Ray: the loop passes in the function that evaluates problems.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from algo.seeding import derive_seed
from orchestrator.data import EVAL_SET_SEED, task_from_config


class Curriculum:
    """The current level of a curriculum and the task of that level. No levels = off: always `default_task`."""

    def __init__(
        self,
        levels: list[int],
        threshold: float,
        every: int,
        num_problems: int,
        make_task: Callable[[int], Any],
        default_task: Any = None,
    ):
        self.levels, self.threshold, self.every, self.num_problems = list(levels), threshold, every, num_problems
        self.make_task, self.default_task = make_task, default_task
        self.level = 0
        self._tasks: dict[int, Any] = {}  # level -> its task, built once

    @property
    def on(self) -> bool:
        return bool(self.levels)

    def task(self) -> Any:
        """The task the current level trains on: max_steps = levels[level], everything else as configured."""
        if not self.on:
            return self.default_task
        if self.level not in self._tasks:
            self._tasks[self.level] = self.make_task(self.levels[self.level])
        return self._tasks[self.level]

    def at_last_level(self) -> bool:
        return self.level >= len(self.levels) - 1

    def due(self, step: int) -> bool:
        """Whether train step `step` ends with a check (never at the last level: nothing left to move to)."""
        return self.on and step % self.every == 0 and not self.at_last_level()

    def validation_problems(self) -> list:
        """The check's problems: validation split, current level, one fixed seed per level (the same problems at
        every check of a level, so pass rates of one level are comparable)."""
        seed = derive_seed(EVAL_SET_SEED, "curriculum", self.levels[self.level])
        return self.task().sample(self.num_problems, "validation", seed=seed)

    def advance(self, pass_rate: float) -> bool:
        """Move to the next level when pass_rate reaches the threshold; whether it moved."""
        if self.at_last_level() or pass_rate < self.threshold:
            return False
        self.level += 1
        return True

    def check(self, evaluate: Callable[[list], dict]) -> dict:
        """Measure the pass rate with evaluate(problems) (its eval/accuracy: greedy) and advance on it; the
        check's metrics."""
        out = evaluate(self.validation_problems())
        pass_rate = out["eval/accuracy"]
        self.advance(pass_rate)
        return {"curriculum/pass_rate": pass_rate, "timing/curriculum_s": out.get("timing/eval_s", 0.0)}

    def metrics(self) -> dict:
        """The level the current task draws at (empty when off)."""
        if not self.on:
            return {}
        return {"curriculum/level": self.level, "curriculum/max_steps": self.levels[self.level]}

    def state(self) -> dict:
        """For the checkpoint's driver state (JSON)."""
        return {"curriculum_level": self.level}

    def load(self, state: dict) -> None:
        """Restore the level from a driver state (a state without it: level 0)."""
        level = state.get("curriculum_level", 0)
        if not 0 <= level < max(len(self.levels), 1):
            raise ValueError(
                f"task.curriculum.levels: the checkpoint is at curriculum level {level}, but the config has "
                f"{len(self.levels)} levels {self.levels}"
            )
        self.level = level


def curriculum_from_config(cfg: DictConfig, task: Any) -> Curriculum:
    """task.curriculum of the config; `task` is the configured task, trained on when the curriculum is off."""
    c = cfg.task.curriculum
    return Curriculum(
        list(c.levels),
        c.threshold,
        c.every,
        c.num_problems,
        make_task=lambda max_steps: task_from_config(cfg, max_steps=max_steps),
        default_task=task,
    )
