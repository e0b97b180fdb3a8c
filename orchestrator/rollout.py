"""Streaming rollouts: every finished trajectory goes to the reward worker (and the critic / reference)
while the rest of the batch is still being generated.

Generators run `generate_stream` as Ray streaming generators; the driver waits on all of them at once with
ray.wait and forwards each trajectory's ObjectRef to the scorers as soon as it exists, so scoring overlaps
generation. Every wait has a deadline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import ray

from algo.trajectory import PromptRequest, Trajectory
from orchestrator.runtime import RoleError, get


@dataclass
class Rollout:
    trajectories: list[Trajectory]
    values: list[list[float]] | None        # critic value per response token, or None
    ref_logprobs: list[list[float]] | None  # reference log-prob per response token, or None
    timing: dict[str, float] = field(default_factory=dict)


def split_round_robin(items: list, n: int) -> list[list]:
    return [items[i::n] for i in range(n)]


def stream_rollouts(generators: list, reward, requests: list[PromptRequest], sampling: dict, *,
                    critic=None, reference=None, timeout_s: float) -> Rollout:
    """Generate `sampling["n"]` responses per request over all generators, scoring each as it finishes."""
    t0 = time.time()
    streams = [g.generate_stream.options(num_returns="streaming").remote(chunk, **sampling)
               for g, chunk in zip(generators, split_round_robin(requests, len(generators))) if chunk]
    scored, values, refs = [], [], []
    pending, deadline = list(streams), t0 + timeout_s
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.time()))
        if not ready:
            raise RoleError(f"generator.generate_stream produced nothing for {timeout_s:.0f} s (train.timeout_s)")
        for stream in ready:
            try:
                traj_ref = next(stream)
            except StopIteration:
                continue
            pending.append(stream)
            scored.append(reward.score.remote(traj_ref))
            if critic is not None:
                values.append(critic.traj_values.remote(traj_ref))
            if reference is not None:
                refs.append(reference.traj_logprobs.remote(traj_ref))
    gen_end = time.time()
    remaining = max(1.0, deadline - gen_end)
    trajectories = get(scored, "reward", "score", remaining)
    out = Rollout(trajectories,
                  get(values, "critic", "traj_values", remaining) if critic is not None else None,
                  get(refs, "reference", "traj_logprobs", remaining) if reference is not None else None)
    end = time.time()
    expected = len(requests) * sampling["n"]
    if len(trajectories) != expected:
        raise RoleError(f"generators returned {len(trajectories)} trajectories, expected {expected}")
    early = sum(t.info.get("scored_at", end) <= gen_end for t in trajectories)
    # reward_s is the scoring time NOT hidden behind generation (the wait after the last trajectory);
    # reward/compute_s is the scorers' own total work, most of it overlapped with generation.
    out.timing = {"timing/generate_s": gen_end - t0, "timing/reward_s": end - gen_end,
                  "reward/compute_s": sum(t.info.get("reward_s", 0.0) for t in trajectories),
                  "stream/scored_during_generation": early / max(1, len(trajectories))}
    return out
