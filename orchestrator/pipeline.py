"""Generation ahead of the learner: the rollouts of a run under `train.max_staleness` = k.

k = 0 is synchronous: step s is generated with the weights of every update before it, then trained on.
With k >= 1, as soon as the batch of step s is in, the generators start on step s + 1 (in a driver thread)
while the learner trains on step s: the two halves of the machine work at once, and the batch of s + 1 is
one version behind the learner that trains on it. Generators take new weights only between batches, and only
when the next batch would otherwise lag the learner by more than k versions; so a trained sample is never
more than k versions old (checked on every batch), and k > 1 also syncs less often.

A sync in the steady state costs the learner little: its half (checks, export) runs while the generators
finish the batch in flight, and where the sync method allows (a staged copy in the object store), the
generators load it in the driver thread just before they start the next batch, while the learner trains.

Which weights make which batch depends only on the step numbers, never on timing, so an async run is as
reproducible as a synchronous one. At a barrier (an evaluation or a checkpoint) nothing is prefetched: the
next batch is then made with the newest weights, which is also what a run resumed from that checkpoint does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

from orchestrator.rollout import Rollout


class Staged(NamedTuple):
    """A sync whose learner half is done: finish() loads the weights into the idle generators (metrics)."""

    finish: Callable[[], dict]
    overlaps_training: bool  # finish() may run while the learner trains (it reads a staged copy)


class Pipeline:
    """rollout_of(step) generates and scores the batch of `step`; stage(version) starts publishing the learner's
    current weights as that version (orchestrator/step.py stage_weights)."""

    def __init__(
        self,
        max_staleness: int,
        rollout_of: Callable[[int], Rollout],
        stage: Callable[[int], Staged],
        generator_version: int,
    ):
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0 (got {max_staleness})")
        self.k, self.rollout_of, self.stage = max_staleness, rollout_of, stage
        self.generator_version = generator_version
        self._pending: tuple[int, Future] | None = None  # (step, its (sync metrics, rollout) being made)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="steprl-rollout")

    def next(self, step: int, version: int, prefetch: bool) -> tuple[Rollout, dict]:
        """The scored rollout of `step`, which the learner at `version` trains on next, and metrics. With k >= 1
        and `prefetch`, step + 1 starts generating before this returns (so: not on the last step or a barrier)."""
        t0 = time.time()
        ahead = self.k > 0 and prefetch
        if self._pending is not None and self._pending[0] == step:
            # The next batch is trained after this step's update, by version + 1 at most: if it needs newer
            # weights, the learner's half of the sync runs now, while the batch in flight finishes.
            needs_sync = ahead and self.generator_version < version + 1 - self.k
            staged = self.stage(version) if needs_sync else None
            metrics = {"timing/sync_s": time.time() - t0}
            t_wait = time.time()
            loaded, rollout = self._pending[1].result()
            metrics.update(loaded)
        else:
            staged = None
            self._drop_pending()
            metrics = self._sync(needed=version - self.k, version=version)
            t_wait = time.time()
            rollout = self.rollout_of(step)
        metrics["timing/wait_s"] = time.time() - t_wait
        self._pending = None
        if ahead:
            self._start(step + 1, version, staged, metrics)
        lags = [version - t.policy_version for t in rollout.trajectories]
        if max(lags) > self.k:  # a scheduling bug, never a condition to train through
            raise RuntimeError(f"step {step}: a sample lags the learner by {max(lags)} versions > k={self.k}")
        metrics.update({"async/staleness_mean": sum(lags) / len(lags), "async/staleness_max": float(max(lags))})
        return rollout, metrics

    def _start(self, step: int, version: int, staged: Staged | None, metrics: dict) -> None:
        """Start generating `step`, trained by version + 1 at most, with weights at most k versions older."""
        if staged is not None and staged.overlaps_training:
            self.generator_version = version
            finish = staged.finish  # the rollout thread loads them right before it generates
        else:
            synced = self._sync(needed=version + 1 - self.k, version=version, staged=staged)
            metrics.update(
                synced, **{"timing/sync_s": metrics.get("timing/sync_s", 0.0) + synced.get("timing/sync_s", 0)}
            )
            finish = dict
        self._pending = (step, self._thread.submit(self._make, finish, step))

    def catch_up(self, version: int) -> dict:
        """Generators hold `version` (before an evaluation, a checkpoint or the end); nothing is in flight."""
        self._drop_pending()
        return self._sync(needed=version, version=version)

    def _make(self, finish: Callable[[], dict], step: int) -> tuple[dict, Rollout]:
        """In the thread: load staged weights (the generators are idle now), then generate the batch."""
        t0 = time.time()
        loaded = finish()
        if loaded:  # the load ran beside training: the generators' stall, not the learner's
            loaded = {**loaded, "timing/sync_overlapped_s": time.time() - t0}
        return loaded, self.rollout_of(step)

    def _sync(self, needed: int, version: int, staged: Staged | None = None) -> dict:
        """Publish `version` now, unless the generators already hold at least `needed`."""
        if self.generator_version >= needed:
            return {}
        t0 = time.time()
        metrics = (staged or self.stage(version)).finish()
        self.generator_version = version
        return {**metrics, "timing/sync_s": time.time() - t0}

    def _drop_pending(self) -> None:
        """Wait for (and discard) a prefetched rollout: generators must be idle before weights change."""
        if self._pending is not None:
            self._pending[1].result()
            self._pending = None

    def close(self) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)
