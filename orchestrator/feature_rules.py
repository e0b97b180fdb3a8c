"""Cross-field rules of the optional features: an online PRM, one critic per reward, a curriculum, guided samples.

Each feature is off by default; when a config switches one on, its rule checks the other sections it relies on
and names the field to change. orchestrator/validate.py calls check_features after the per-field RULES.
"""

from __future__ import annotations

from omegaconf import DictConfig

from algo import registry
from orchestrator.rules import ConfigError
from tasks import GOLD_SOLUTION_KINDS
from workers.sources import SOURCES


def check_features(cfg: DictConfig) -> None:
    _check_online_prm(cfg)
    _check_critics(cfg)
    _check_curriculum(cfg)
    _check_guided(cfg)


def _check_guided(cfg: DictConfig) -> None:
    """algo.guided: a gold solution for a group that all failed (orchestrator/guided.py). It needs a group estimator
    (the gold's advantage is relative to its group), a task that writes gold solutions, an outcome source (to say
    that a group failed), and a ratio taken against the learner's own old log-probs: the gold text has no
    behaviour log-probs (nobody sampled it), and those are what off_policy=behavior / decoupled and a KL in the
    reward read."""
    a = cfg.algo
    if not a.guided.enable:
        return
    if not registry.ESTIMATORS[a.estimator].needs_groups:
        groups = ", ".join(n for n, e in registry.ESTIMATORS.items() if e.needs_groups)
        raise ConfigError(
            f"algo.guided.enable: a gold sample takes its advantage from its group; algo.estimator={a.estimator} "
            f"compares no groups (group estimators: {groups})"
        )
    if cfg.task.kind not in GOLD_SOLUTION_KINDS:
        raise ConfigError(
            f"algo.guided.enable: task.kind={cfg.task.kind} has no gold solutions "
            f"(kinds with them: {', '.join(GOLD_SOLUTION_KINDS)})"
        )
    if not any(SOURCES[s.name].gives == "outcome" for s in cfg.reward.sources):
        raise ConfigError(
            "reward.sources: algo.guided.enable finds the groups that all failed by their outcome; add {name: outcome}"
        )
    if a.off_policy != "recompute":
        raise ConfigError(
            f"algo.off_policy={a.off_policy} reads behaviour log-probs, which a gold sample (algo.guided.enable) "
            "does not have; use algo.off_policy=recompute"
        )
    if a.kl_coef > 0 and a.kl_in == "reward":
        raise ConfigError(
            "algo.kl_in=reward takes the KL from behaviour log-probs, which a gold sample (algo.guided.enable) "
            "does not have; use algo.kl_in=loss"
        )


def _check_curriculum(cfg: DictConfig) -> None:
    """task.curriculum: levels of chain length, decided on the validation split (never the test split)."""
    t = cfg.task
    levels = list(t.curriculum.levels)
    if not levels:
        return
    if t.kind != "arithmetic":
        raise ConfigError(
            f"task.curriculum.levels: a curriculum over chain length needs task.kind=arithmetic (got {t.kind})"
        )
    if levels[0] < t.min_steps:
        raise ConfigError(
            f"task.curriculum.levels: every level must be >= task.min_steps ({t.min_steps}); got {levels}"
        )
    if cfg.eval.validation_percent <= 0:
        raise ConfigError(
            "task.curriculum.levels: the curriculum decides on the validation split, which "
            "eval.validation_percent makes; set eval.validation_percent > 0"
        )


def _check_critics(cfg: DictConfig) -> None:
    """algo.critics: one critic per reward, each reward at most once and given by a reward source, only with an
    estimator that uses a critic; the critics' weights take the place of algo.outcome_weight, and the KL penalty
    cannot be in the reward (no critic predicts it)."""
    a = cfg.algo
    if not a.critics:
        return
    gives = {SOURCES[s.name].gives for s in cfg.reward.sources}
    first: dict[str, int] = {}
    for i, critic in enumerate(a.critics):
        if critic.reward not in registry.CRITIC_REWARDS:
            raise ConfigError(
                f"algo.critics[{i}].reward: bad value {critic.reward!r}; allowed: one of "
                + ", ".join(registry.CRITIC_REWARDS)
            )
        if not critic.weight >= 0:
            raise ConfigError(f"algo.critics[{i}].weight: bad value {critic.weight!r}; allowed: a number >= 0")
        if critic.reward in first:
            raise ConfigError(
                f"algo.critics[{i}].reward: {critic.reward} already has a critic "
                f"(algo.critics[{first[critic.reward]}]); at most one critic per reward"
            )
        first[critic.reward] = i
        kind = registry.CRITIC_REWARDS[critic.reward]  # the reward source kind that gives this reward
        if kind not in gives:
            names = ", ".join(n for n, src in SOURCES.items() if src.gives == kind)
            raise ConfigError(
                f"algo.critics[{i}].reward: the {critic.reward} critic needs a source of {kind} rewards in "
                f"reward.sources ({names})"
            )
    if sum(critic.weight for critic in a.critics) <= 0:
        raise ConfigError("algo.critics: the weights sum to 0 (the policy would get no advantage)")
    if not registry.ESTIMATORS[a.estimator].needs_values:
        critics = ", ".join(n for n, e in registry.ESTIMATORS.items() if e.needs_values)
        raise ConfigError(
            f"algo.critics: one critic per reward needs a critic estimator ({critics}); "
            f"algo.estimator={a.estimator} uses no critic"
        )
    if a.outcome_weight != 1.0:
        raise ConfigError(
            f"algo.outcome_weight={a.outcome_weight}: with algo.critics the outcome's weight is its critic's "
            "algo.critics[].weight (the outcome critic learns the outcome itself); leave algo.outcome_weight at 1.0"
        )
    if a.kl_coef > 0 and a.kl_in == "reward":
        raise ConfigError(
            "algo.kl_in=reward puts the KL penalty into the reward, which no critic of algo.critics predicts; "
            "use algo.kl_in=loss with algo.critics"
        )


def _check_online_prm(cfg: DictConfig) -> None:
    """An online PRM is one model that learns from outcomes: one such source, one reward actor, an outcome."""
    online = [i for i, s in enumerate(cfg.reward.sources) if s.online_lr > 0]
    if not online:
        return
    if len(online) > 1:
        raise ConfigError(f"reward.sources[{online[1]}].online_lr: at most one prm source may learn online")
    if cfg.reward.replicas != 1:
        raise ConfigError(
            f"reward.replicas: an online PRM (reward.sources[{online[0]}].online_lr > 0) is one model in one reward "
            f"actor; got {cfg.reward.replicas} replicas"
        )
    if not any(SOURCES[s.name].gives == "outcome" for s in cfg.reward.sources):
        raise ConfigError(
            f"reward.sources[{online[0]}].online_lr: an online PRM learns from outcomes; add {{name: outcome}}"
        )
