"""Dynamic sampling (DAPO, Yu et al. 2503.14476): a step's batch made of groups that carry signal.

A group whose samples all got the same reward gives a group-relative estimator no advantage (algo/dynamic.py).
With rollout.dynamic_sampling, such groups are dropped after scoring and fresh prompts are drawn, as many as
groups are missing, for at most rollout.dynamic_max_rounds extra rounds. If the batch is still short after the
last round, dropped groups fill it (earliest first): the learner always gets prompts_per_step x group_size
samples, which its mini-batch split relies on (orchestrator/validate.py).

Group ids stay unique within the step: prompt i of extra round r is group r * ROUND_STRIDE + i. The group id
is part of every sample's seed (workers/generator.py), so each round samples with fresh noise, and the ids
stay valid for the estimators, which only compare them for equality. The batch is returned in (group_id,
sample) order, as stream_rollouts returns one round: round 0's groups first, then round 1's, and so on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from algo.dynamic import Sample, informative_groups
from algo.trajectory import PromptRequest
from orchestrator.rollout import Rollout

ROUND_STRIDE = 1_000_000  # group id of prompt i of extra round r: r * ROUND_STRIDE + i


def fill_batch(
    score: Callable[[list[PromptRequest]], Rollout],
    first_requests: list[PromptRequest],
    extra_requests: Callable[[int, int], list[PromptRequest]],
    want_groups: int,
    max_rounds: int,
    use_steps: bool,
) -> Rollout:
    """The scored batch of `want_groups` groups, informative ones first in draw order.

    score(requests) generates and scores one round (orchestrator.step.score_rollout); extra_requests(r, n)
    gives the n fresh prompts of extra round r (1-based; their group ids are replaced here). use_steps: the
    estimator learns from step rewards, so groups differing only there are informative. The dynamic/* metrics
    go into the returned Rollout.timing, which train_step adds to the step's metrics.
    """
    if any(not 0 <= r.group_id < ROUND_STRIDE for r in first_requests):
        raise ValueError(f"fill_batch: the first round's group ids must be in [0, {ROUND_STRIDE})")
    rounds = [score(first_requests)]
    kept, dropped = _split(rounds[0], use_steps)
    while len(kept) < want_groups and len(rounds) - 1 < max_rounds:
        r, missing = len(rounds), want_groups - len(kept)
        fresh = extra_requests(r, missing)
        if len(fresh) != missing:
            raise ValueError(f"fill_batch: extra_requests({r}, {missing}) gave {len(fresh)} prompts")
        rounds.append(score([replace(req, group_id=r * ROUND_STRIDE + i) for i, req in enumerate(fresh)]))
        more_kept, more_dropped = _split(rounds[-1], use_steps)
        kept += more_kept
        dropped += more_dropped
    kept = kept[:want_groups]  # more informative groups than wanted: the first ones drawn
    filled = dropped[: want_groups - len(kept)]  # still short after the last round: no-signal groups fill up
    out = _merge(rounds, set(kept) | set(filled))
    out.timing.update(
        {
            "dynamic/rounds": len(rounds) - 1,
            "dynamic/dropped_groups": len(dropped),
            "dynamic/filled_groups": len(filled),
            # the sample budget counts what was generated, not only what was trained on
            "dynamic/samples_generated": sum(len(x.trajectories) for x in rounds),
        }
    )
    return out


def _split(rollout: Rollout, use_steps: bool) -> tuple[list[int], list[int]]:
    """The group ids of one round, informative and not, each in draw order (the rollout's group order)."""
    groups: dict[int, list[Sample]] = {}
    for t in rollout.trajectories:
        samples = groups.setdefault(t.group_id, [])
        if t.sample_valid:  # a masked sample has no reward to compare (its reward source failed)
            outcome = 0.0 if t.outcome_reward is None else float(t.outcome_reward)  # as algo.batch.collate reads it
            samples.append((outcome, tuple(t.step_rewards or ())))
    informative = informative_groups(groups, use_steps)
    return [g for g in groups if g in informative], [g for g in groups if g not in informative]


def _merge(rounds: list[Rollout], chosen: set[int]) -> Rollout:
    """One Rollout of the chosen groups' trajectories in (group_id, sample) order, each trajectory's critic
    values (of every critic) and reference log-probs kept beside it."""
    rows = sorted(
        (t.group_id, t.info["sample"], k, i)
        for k, rollout in enumerate(rounds)
        for i, t in enumerate(rollout.trajectories)
        if t.group_id in chosen
    )
    return Rollout(
        [rounds[k].trajectories[i] for _, _, k, i in rows],
        _column([x.values for x in rounds], rows),
        _column([x.ref_logprobs for x in rounds], rows),
        _merge_timing([x.timing for x in rounds]),
        {r: _column([x.critic_values.get(r) for x in rounds], rows) or [] for r in rounds[0].critic_values},
    )


def _column(per_round: list[list[list[float]] | None], rows: list[tuple[int, int, int, int]]) -> list | None:
    """A per-trajectory list (values, ref_logprobs) for the merged rows; None when the roles give none."""
    columns = [column for column in per_round if column is not None]
    if not columns:
        return None
    if len(columns) < len(per_round):  # the same roles score every round: a missing column is a bug
        raise ValueError("fill_batch: some rounds have critic values / reference log-probs and some do not")
    return [columns[k][i] for _, _, k, i in rows]


def _merge_timing(timings: list[dict[str, float]]) -> dict[str, float]:
    """Seconds (keys ending in _s) add up over the rounds; any other entry (a fraction, the online PRM's
    statistics) describes one scoring call, and the last round's stands."""
    out: dict[str, float] = {}
    for timing in timings:
        for key, value in timing.items():
            out[key] = out.get(key, 0.0) + value if key.endswith("_s") else value
    return out
