"""The per-field rules of a config: (dotted field, check, what is allowed), one line each.

Every choice comes from the registry that implements it (all of them torch-free, so a bad config fails in a
fraction of a second); tests/orchestrator/test_config.py checks that no second list exists.
orchestrator/validate.py applies them, then the cross-field rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from algo import registry
from algo.schedules import SCHEDULES
from algo.search import AGGREGATIONS
from orchestrator.config import DTYPES, LABEL_KINDS, SEARCH_METHODS, SYNC_METHODS
from orchestrator.data import EVAL_SPLITS
from tasks import TASKS
from tasks.arithmetic import OPERATORS
from tasks.chat import CHAT_TEMPLATES
from tasks.oracle import STEP_MEANINGS
from workers.sources import PRM_FORMATS


class ConfigError(ValueError):
    """A config problem, message starting with the dotted field name."""


def _choices(values: tuple) -> tuple[Callable[[Any], bool], Callable[[], str]]:
    return (lambda v: v in values), (lambda: "one of " + ", ".join(map(str, values)))


def _positive(v) -> bool:
    return v is not None and v > 0


RULES: list[tuple[str, Callable[[Any], bool], Callable[[], str]]] = [
    ("task.kind", *_choices(tuple(TASKS))),
    ("task.chat_template", *_choices(CHAT_TEMPLATES)),
    ("task.min_steps", _positive, lambda: "an integer >= 1"),
    ("task.modulus", lambda v: v >= 2, lambda: "an integer >= 2"),
    (
        "task.operators",
        lambda v: bool(v) and set(v) <= set(OPERATORS),
        lambda: f"a non-empty subset of {''.join(OPERATORS)!r}",
    ),
    (
        "task.curriculum.levels",
        lambda v: all(v[i] < v[i + 1] for i in range(len(v) - 1)),
        lambda: "a strictly increasing list of chain lengths (empty: no curriculum)",
    ),
    ("task.curriculum.threshold", lambda v: 0 < v <= 1, lambda: "a number in (0, 1]"),
    ("task.curriculum.every", _positive, lambda: "an integer >= 1"),
    ("task.curriculum.num_problems", _positive, lambda: "an integer >= 1"),
    ("model.dtype", *_choices(DTYPES)),
    ("rollout.num_generators", _positive, lambda: "an integer >= 1"),
    ("rollout.prompts_per_step", _positive, lambda: "an integer >= 1"),
    ("rollout.group_size", _positive, lambda: "an integer >= 1"),
    ("rollout.temperature", lambda v: v >= 0, lambda: "a number >= 0"),
    ("rollout.top_p", lambda v: 0 < v <= 1, lambda: "a number in (0, 1]"),
    ("rollout.max_new_tokens", _positive, lambda: "an integer >= 1"),
    ("rollout.step_delimiter", lambda v: len(v) > 0, lambda: "a non-empty string"),
    ("rollout.dynamic_max_rounds", lambda v: v >= 0, lambda: "an integer >= 0"),
    ("reward.meaning", *_choices(STEP_MEANINGS)),
    ("reward.transform", *_choices(tuple(registry.TRANSFORMS))),
    ("algo.estimator", *_choices(tuple(registry.ESTIMATORS))),
    ("algo.kl_estimator", *_choices(registry.KL_ESTIMATORS)),
    ("algo.kl_in", *_choices(registry.KL_PLACEMENTS)),
    ("algo.kl_coef", lambda v: v >= 0, lambda: "a number >= 0"),
    ("algo.clip_low", lambda v: 0 < v < 1, lambda: "a number in (0, 1)"),
    ("algo.clip_high", lambda v: v > 0, lambda: "a number > 0"),
    ("algo.dual_clip", lambda v: v is None or v > 1, lambda: "null or a number > 1"),
    ("algo.loss_agg", *_choices(registry.LOSS_AGGREGATIONS)),
    ("algo.off_policy", *_choices(registry.OFF_POLICY)),
    ("algo.tis_cap", lambda v: v is None or v > 0, lambda: "null or a number > 0"),
    ("algo.guided.max_weight", _positive, lambda: "a number > 0"),
    ("train.max_staleness", lambda v: v >= 0, lambda: "an integer >= 0"),
    ("algo.entropy_coef", lambda v: v >= 0, lambda: "a number >= 0"),
    ("algo.sft_coef", lambda v: v >= 0, lambda: "a number >= 0"),
    ("learner.num_ranks", _positive, lambda: "an integer >= 1"),
    ("learner.backend", *_choices(("gloo", "nccl"))),
    ("learner.zero_stage", *_choices((0, 1, 2, 3))),
    ("learner.micro_batch_size", _positive, lambda: "an integer >= 1"),
    ("learner.lr", lambda v: v > 0, lambda: "a number > 0"),
    ("learner.schedule", *_choices(tuple(SCHEDULES))),
    ("learner.ppo_epochs", _positive, lambda: "an integer >= 1"),
    ("learner.mini_batches", _positive, lambda: "an integer >= 1"),
    ("sync.method", *_choices(SYNC_METHODS)),
    ("eval.num_problems", _positive, lambda: "an integer >= 1"),
    ("eval.split", *_choices(tuple(EVAL_SPLITS))),
    ("eval.validation_percent", lambda v: 0 <= v <= 50, lambda: "an integer in [0, 50]"),
    ("eval.k", _positive, lambda: "an integer >= 1"),
    ("train.steps", lambda v: v >= 0, lambda: "an integer >= 0"),
    ("train.timeout_s", _positive, lambda: "a number of seconds > 0"),
    ("train.keep_checkpoints", _positive, lambda: "an integer >= 1 (resume needs the newest checkpoint)"),
    ("train.max_actor_restarts", lambda v: v >= 0, lambda: "an integer >= 0"),
    ("reward.max_masked_fraction", lambda v: 0 <= v <= 1, lambda: "a number in [0, 1]"),
    ("reward.max_masked_steps", _positive, lambda: "an integer >= 1"),
    ("reward.replicas", _positive, lambda: "an integer >= 1"),
    ("reward.batch_size", _positive, lambda: "an integer >= 1"),
    ("cluster.placement_strategy", *_choices(("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"))),
    ("cluster.threads_per_actor", _positive, lambda: "an integer >= 1"),
    (
        "label.kinds",
        lambda v: bool(v) and set(v) <= set(LABEL_KINDS),
        lambda: "a non-empty list of " + _or(LABEL_KINDS),
    ),
    ("label.meaning", *_choices(STEP_MEANINGS)),
    ("label.num_problems", _positive, lambda: "an integer >= 1"),
    ("label.samples_per_problem", _positive, lambda: "an integer >= 1"),
    ("label.rollouts", _positive, lambda: "an integer >= 1"),
    ("label.prover_k", _positive, lambda: "an integer >= 1"),
    ("label.heldout_problems", _positive, lambda: "an integer >= 1"),
    ("prm.format", *_choices(PRM_FORMATS)),
    ("prm.val_fraction", lambda v: 0 <= v < 1, lambda: "a number in [0, 1)"),
    ("prm.epochs", _positive, lambda: "an integer >= 1"),
    ("prm.batch_size", _positive, lambda: "an integer >= 1"),
    ("prm.lr", _positive, lambda: "a number > 0"),
    ("prm.threshold", lambda v: 0 < v < 1, lambda: "a number in (0, 1)"),
    ("search.methods", lambda v: bool(v) and set(v) <= set(SEARCH_METHODS), lambda: "a list of " + _or(SEARCH_METHODS)),
    ("search.budgets", lambda v: bool(v) and all(n >= 1 for n in v), lambda: "a non-empty list of integers >= 1"),
    ("search.num_problems", _positive, lambda: "an integer >= 1"),
    ("search.aggregation", *_choices(tuple(AGGREGATIONS))),
    ("search.expansions", _positive, lambda: "an integer >= 1"),
    ("search.mcts_children", _positive, lambda: "an integer >= 1"),
    ("search.max_depth", _positive, lambda: "an integer >= 1"),
]


def _or(names: tuple) -> str:
    return ", ".join(names)
