"""Streaming rollouts: every finished trajectory goes to the reward worker (and the critic / reference)
while the rest of the batch is still being generated.

The generator pool (orchestrator/generators.py) yields each trajectory once as it finishes, replacing dead
replicas; the driver forwards each trajectory's ObjectRef to the scorers as soon as it exists, so scoring
overlaps generation. Every wait has a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from algo.trajectory import PromptRequest, Trajectory
from orchestrator.runtime import ray_get


@dataclass
class Rollout:
    trajectories: list[Trajectory]
    values: list[list[float]] | None  # critic value per response token, or None
    ref_logprobs: list[list[float]] | None  # reference log-prob per response token, or None
    timing: dict[str, float] = field(default_factory=dict)
    # with one critic per reward (algo.critics): reward -> that critic's value per response token
    critic_values: dict[str, list[list[float]]] = field(default_factory=dict)


class TrajectorySource(Protocol):
    """Where stream_rollouts takes trajectories from: the GeneratorPool (orchestrator/generators.py), or
    trajectories already written (the gold samples of orchestrator/guided.py)."""

    def stream(self, requests: list[PromptRequest], sampling: dict) -> Iterator[tuple[object, Trajectory]]: ...


def stream_rollouts(
    generators: TrajectorySource,
    rewards: list,
    requests: list[PromptRequest],
    sampling: dict,
    *,
    reward_batch: int = 1,
    critic=None,
    critics: dict | None = None,
    reference=None,
    timeout_s: float,
) -> Rollout:
    """Generate `sampling["n"]` responses per request over all generators, scoring each as it finishes.

    The result is in (group_id, sample index) order whatever the finishing order was: the batch, and so
    every number the learner computes, does not depend on timing. Trajectories go to the reward replicas in
    turn, `reward_batch` at a time (one batched PRM forward each; 1 scores each the moment it exists).
    `critic` (the critic of the combined reward) and each of `critics` (reward -> its critic, algo.critics)
    value every trajectory.
    """
    t0 = time.time()
    keys, values, refs = [], [], []
    critics = critics or {}
    part_values: dict[str, list] = {reward: [] for reward in critics}
    scored: list = []  # one ObjectRef per reward call
    pending: list = []  # trajectory refs not yet sent

    def send_pending() -> None:
        if pending:  # as separate arguments, so Ray resolves each ObjectRef before the call
            scored.append(rewards[len(scored) % len(rewards)].score_group.remote(*pending))
            pending.clear()

    for traj_ref, traj in generators.stream(requests, sampling):
        keys.append((traj.group_id, traj.info["sample"]))
        pending.append(traj_ref)
        if len(pending) >= reward_batch:
            send_pending()
        if critic is not None:
            values.append(critic.traj_values.remote(traj_ref))
        for reward, part_critic in critics.items():
            part_values[reward].append(part_critic.traj_values.remote(traj_ref))
        if reference is not None:
            refs.append(reference.traj_logprobs.remote(traj_ref))
    send_pending()
    gen_end = time.time()
    remaining = max(1.0, t0 + timeout_s - gen_end)
    order = sorted(range(len(keys)), key=keys.__getitem__)
    batches = ray_get(scored, "reward", "score_group", remaining)
    trajectories = _ordered([t for batch in batches for t in batch], order)
    out = Rollout(
        trajectories,
        _ordered(ray_get(values, "critic", "traj_values", remaining), order) if critic is not None else None,
        _ordered(ray_get(refs, "reference", "traj_logprobs", remaining), order) if reference is not None else None,
        critic_values={
            reward: _ordered(ray_get(pending_values, f"critic-{reward}", "traj_values", remaining), order)
            for reward, pending_values in part_values.items()
        },
    )
    end = time.time()
    early = sum(t.info.get("scored_at", end) <= gen_end for t in trajectories)
    # reward_s is the scoring time NOT hidden behind generation (the wait after the last trajectory);
    # reward/compute_s is the scorers' own total work, most of it overlapped with generation.
    out.timing = {
        "timing/generate_s": gen_end - t0,
        "timing/reward_s": end - gen_end,
        "reward/compute_s": sum(t.info.get("reward_s", 0.0) for t in trajectories),
        "stream/scored_during_generation": early / max(1, len(trajectories)),
    }
    return out


def _ordered(items: list, order: list[int]) -> list:
    return [items[k] for k in order]
