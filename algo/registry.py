"""The algorithm names a config can pick, with what each one needs: the one list of each kind.

Torch-free on purpose: config validation reads these tables and must fail in a fraction of a second, before
torch, Ray or vLLM is imported. Each implementing module finds its functions here by name (`bind`), so a
name listed here without an implementation fails at import, and no module keeps a second list of names.

- ESTIMATORS (algo/advantages.py): what each advantage estimator reads, and the `algo.*` config fields it
  takes as keyword arguments. Their defaults live in one layer, the config schema.
- TRANSFORMS (algo/transforms.py): reward transforms with their parameters and defaults
  (`reward.transform_params` may override them).
- KL_ESTIMATORS (algo/kl.py), LOSS_AGGREGATIONS (algo/losses.py), OFF_POLICY (algo/offpolicy.py),
  CRITIC_REWARDS (algo/advantages.py): plain names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Estimator:
    """Capabilities of an advantage estimator: the inputs it needs and the config fields it reads."""

    params: tuple[str, ...]  # names of algo.* config fields passed as keyword arguments
    needs_values: bool = False  # critic values (a critic worker runs and trains)
    needs_step_rewards: bool = False  # a step reward source (oracle or prm)
    needs_groups: bool = False  # several samples per prompt (rollout.group_size >= 2)


ESTIMATORS: dict[str, Estimator] = {
    "grpo_outcome": Estimator(("std_normalize",), needs_groups=True),
    "grpo_process": Estimator(
        ("std_normalize", "outcome_weight", "clip_normalized"), needs_step_rewards=True, needs_groups=True
    ),
    "grpo_step": Estimator(
        ("std_normalize", "outcome_weight", "clip_normalized"), needs_step_rewards=True, needs_groups=True
    ),
    "gae": Estimator(("gamma", "lam", "outcome_weight"), needs_values=True),
    "step_ppo": Estimator(("gamma", "lam", "outcome_weight"), needs_values=True, needs_step_rewards=True),
    "pav": Estimator(("pav_alpha",), needs_step_rewards=True),
    "rloo": Estimator((), needs_groups=True),
    "reinforce_pp": Estimator(("gamma", "std_normalize")),
}


@dataclass(frozen=True)
class Transform:
    """A reward transform's keyword parameters with their defaults."""

    params: Mapping[str, Any] = field(default_factory=dict)


TRANSFORMS: dict[str, Transform] = {
    "identity": Transform(),
    "log_prob": Transform({"log_z": 0.0, "min_value": -10.0}),
    "linear": Transform(),
    "clip": Transform({"eta": 0.5}),
    "delta": Transform({"keep_last": True}),
    "min_form": Transform(),
}

# The rewards one critic of `algo.critics` can predict (algo/critics.py, critic_advantages): "process" the step
# rewards, "outcome" the outcome reward; each with the kind of reward source that gives it (workers.sources
# Source.gives). Without algo.critics one critic predicts their combined reward.
CRITIC_REWARDS: dict[str, str] = {"process": "step", "outcome": "outcome"}

KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")
KL_PLACEMENTS: tuple[str, ...] = ("loss", "reward")  # where KL(policy || reference) goes (algo/batch.py)

LOSS_AGGREGATIONS: tuple[str, ...] = ("token", "step", "sequence")

# What the PPO ratio is taken against when samples may come from older weights (algo/offpolicy.py).
OFF_POLICY: tuple[str, ...] = ("recompute", "behavior", "decoupled")


def bind(
    names: Mapping[str, Any] | tuple[str, ...],
    namespace: Mapping[str, Any],
    prefix: str = "",
) -> dict[str, Callable[..., Any]]:
    """name -> the function called prefix + name in an implementing module's namespace (its globals())."""
    missing = [n for n in names if not callable(namespace.get(prefix + n))]
    if missing:
        raise ImportError(f"{namespace.get('__name__')}: no function for registry names {missing}")
    return {n: namespace[prefix + n] for n in names}


def unknown(kind: str, name: str, valid: Mapping[str, Any] | tuple[str, ...]) -> ValueError:
    """The error for a name that is not in a registry, listing the valid ones."""
    return ValueError(f"unknown {kind} {name!r}; valid: {', '.join(valid)}")
