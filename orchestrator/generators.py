"""The generator replicas as one pool that survives a dead replica.

A replica that dies (its process killed, its node lost) is replaced by a new actor in the same placement
bundle; the new actor loads the current weight version (and its hashes are compared) before it serves,
and the samples the dead replica still owed are re-issued to it. Every sample is keyed by (group_id,
sample index): the pool yields each requested key exactly once, so nothing is lost or counted twice.
A sample's seed depends only on its key (workers/generator.py), so a re-issued sample is drawn with the
seed it would have had; its tokens can still differ in the last bits of the log-probs because it is
batched with other requests on the new replica.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import ray

from algo.fingerprint import hash_mismatches
from algo.trajectory import PromptRequest, Trajectory
from orchestrator.runtime import RoleError, ray_get

Key = tuple[int, int]  # (group_id, sample index)
log = logging.getLogger(__name__)


@dataclass
class Published:
    """The newest weights the generators must hold: their version, the per-tensor hashes of what the learner
    sent (algo.fingerprint.tensor_hashes), and the ObjectRef of the weights, or, after a collective sync
    (which leaves no copy in the object store), `export` to make one if a replacement needs it."""

    version: int
    hashes: dict[str, str]
    weights_ref: object = None
    export: Callable[[], object] | None = None

    def ref(self) -> object:
        """The weights' ObjectRef, exported on first use after a collective sync."""
        if self.weights_ref is None:
            if self.export is None:
                raise RuntimeError(f"version {self.version}: neither a weights ObjectRef nor an export")
            self.weights_ref = self.export()
        return self.weights_ref


class GeneratorPool:
    """Replicas of GeneratorWorker; `make(i)` creates the actor of replica i (in its placement bundle)."""

    def __init__(self, make: Callable[[int], Any], count: int, *, max_restarts: int, timeout_s: float):
        self.make, self.max_restarts, self.timeout_s = make, max_restarts, timeout_s
        self.actors: list[Any] = [make(i) for i in range(count)]  # Ray actor handles of GeneratorWorker
        self.published: Published | None = None
        self.restarts = 0  # replicas replaced so far
        self.reissued = 0  # samples re-issued after their replica died

    def wait_ready(self) -> None:
        ray_get([a.__ray_ready__.remote() for a in self.actors], "generator", "__init__", self.timeout_s)

    # ------------------------------------------------------------------------------------ weights --
    def load_weights(self, published: Published) -> dict:
        """object_store sync: every replica loads `published`; a replica found dead is replaced (and so
        loads it too). Raises unless every replica's read-back hashes equal the published ones."""
        self.published = published
        refs = [a.load_weights.remote(published.version, published.ref()) for a in self.actors]
        results = []
        for i, ref in enumerate(refs):
            try:
                results.append(get_alive(ref, "load_weights", self.timeout_s))
            except ActorGone as e:
                results.append(self.replace(i, e))
        for i, r in enumerate(results):
            self._check(i, r)
        return {"sync/load_s": max(r["load_s"] for r in results), "sync/mismatched_tensors": 0}

    def receive_weights(
        self, version: int, channel: dict, send: Callable[[], list], export: Callable[[], object]
    ) -> dict:
        """collective sync: every replica joins `channel` (rank 1 + its index) and receives the broadcast
        that send() starts on the learner; the receivers and the sender are started together (a broadcast
        needs both sides) and waited on with one deadline. Raises unless every replica's read-back hashes
        equal the hashes of what learner rank 0 sent. A replica that dies during the broadcast breaks it
        for every member, so that stops the run (RoleError naming it); one that dies later is replaced and
        loads the weights through the object store (Published.export), as the collective group is gone."""
        if channel["world_size"] != len(self.actors) + 1:
            raise ValueError(f"channel of {channel['world_size']} members for {len(self.actors)} generators + sender")
        args = {k: channel[k] for k in ("master_addr", "master_port", "world_size", "meta", "backend", "device")}
        senders = send()  # first: its rank 0 hosts the store the receivers connect to
        receivers = [
            a.receive_weights.remote(version, rank=i + 1, timeout_s=channel["timeout_s"], **args)
            for i, a in enumerate(self.actors)
        ]
        names = [f"learner rank {r}" for r in range(len(senders))] + [f"generator {i}" for i in range(len(receivers))]
        done = wait_all(senders + receivers, names, "receive_weights (collective sync)", self.timeout_s)
        sent, results = done[0], done[len(senders) :]
        self.published = Published(version, sent["hashes"], export=export)
        for i, r in enumerate(results):
            self._check(i, r)
        return {
            "sync/load_s": max(r["load_s"] for r in results),
            "sync/send_s": sent["send_s"],
            "sync/mismatched_tensors": 0,
        }

    def _check(self, i: int, loaded: dict) -> None:
        published = self.published
        if published is None:  # callers publish first: load_weights sets it, replace checks it
            raise RuntimeError(f"generator {i}: no published weights to check its hashes against")
        check_loaded(i, published.version, published.hashes, loaded["hashes"])

    def replace(self, i: int, cause: Exception) -> dict:
        """A new actor for replica i, holding the published weights; returns its load_weights result."""
        self.restarts += 1
        if self.restarts > self.max_restarts:
            raise RoleError(
                f"generator {i} died and train.max_actor_restarts={self.max_restarts} replacements are used up: {cause}"
            )
        log.warning(
            "generator %d died; starting a replacement (%d of train.max_actor_restarts=%d): %s",
            i,
            self.restarts,
            self.max_restarts,
            str(cause).splitlines()[0],
        )
        ray.kill(self.actors[i], no_restart=True)
        self.actors[i] = actor = self.make(i)
        ray_get(actor.__ray_ready__.remote(), "generator", f"__init__ (replacement of replica {i})", self.timeout_s)
        if self.published is None:
            return {"load_s": 0.0, "hashes": {}}
        p = self.published
        # Through the object store whatever the sync method: a collective group is made for one sync and
        # its members, and a new actor should not stall the others (it loads while they sample).
        loaded = ray_get(actor.load_weights.remote(p.version, p.ref()), "generator", "load_weights", self.timeout_s)
        self._check(i, loaded)
        return loaded

    # ---------------------------------------------------------------------------------- sampling --
    def stream(self, requests: list[PromptRequest], sampling: dict) -> Iterator[tuple[object, Trajectory]]:
        """(ObjectRef, trajectory) of each of the n samples of every request, exactly once, in finishing
        order. Requests go round-robin to the replicas; a dead replica's unfinished samples are re-issued
        to its replacement. The deadline (timeout_s) covers the whole call."""
        n = sampling["n"]
        wanted = {(r.group_id, i) for r in requests for i in range(n)}
        by_group = {r.group_id: r for r in requests}
        got: set[Key] = set()
        active: dict = {}  # stream -> (replica, keys it owes)
        for i in range(len(self.actors)):
            chunk = requests[i :: len(self.actors)]
            if chunk:
                active[self._start(i, chunk, sampling)] = (i, {(r.group_id, s) for r in chunk for s in range(n)})
        deadline = time.monotonic() + self.timeout_s
        while active:
            ready, _ = ray.wait(list(active), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise RoleError(
                    f"generator.generate_stream produced nothing for {self.timeout_s:.0f} s (train.timeout_s)"
                )
            stream: Any = ready[0]  # an ObjectRefGenerator (a key of `active`); ray.wait types it ObjectRef too
            i, owed = active.pop(stream)
            try:
                ref = next(stream)
                traj = get_alive(ref, "generate_stream", max(1.0, deadline - time.monotonic()))
            except StopIteration:
                if owed - got:
                    raise RoleError(f"generator {i} ended its stream owing {len(owed - got)} samples") from None
                continue
            except (ActorGone, ray.exceptions.RayActorError) as e:  # next() itself may raise it
                missing = sorted(owed - got)
                self.replace(i, e)
                self.reissued += len(missing)
                log.warning("generator %d replaced; re-issuing the %d samples it still owed", i, len(missing))
                reissue = [
                    _subset(by_group[g], [s for gg, s in missing if gg == g]) for g in sorted({g for g, _ in missing})
                ]
                if reissue:
                    active[self._start(i, reissue, sampling)] = (i, set(missing))
                continue
            key = (traj.group_id, traj.info["sample"])
            if key not in wanted or key in got:
                raise RoleError(f"generator {i} returned sample {key} twice or unasked")
            got.add(key)
            active[stream] = (i, owed)
            yield ref, traj
        if got != wanted:
            raise RoleError(f"generators returned {len(got)} of {len(wanted)} samples")

    def _start(self, i: int, requests: list[PromptRequest], sampling: dict):
        return self.actors[i].generate_stream.options(num_returns="streaming").remote(requests, **sampling)

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)


class ActorGone(RuntimeError):
    """The actor's process is gone (killed, crashed, node lost): the call can be re-issued elsewhere."""


def get_alive(ref, what: str, timeout_s: float):
    """ray.get that tells a dead actor (ActorGone) apart from a call that failed (RoleError)."""
    try:
        return ray.get(ref, timeout=timeout_s)
    except ray.exceptions.RayActorError as e:
        raise ActorGone(f"generator.{what}: {e}") from e
    except ray.exceptions.GetTimeoutError:
        raise RoleError(f"generator.{what} did not answer within {timeout_s:.0f} s (train.timeout_s)") from None
    except ray.exceptions.RayError as e:
        raise RoleError(f"generator.{what} failed: {e}") from e


def check_loaded(replica: int, version: int, sent: dict[str, str], loaded: dict[str, str]) -> None:
    """Raise naming the replica, the version and up to 5 tensors whose read-back hash differs from the
    hash of what the learner sent (or that either side lacks)."""
    bad = hash_mismatches(sent, loaded)
    if bad:
        raise RoleError(
            f"generator {replica} holds different weights than the learner sent for version {version}: "
            f"{len(bad)} of {len(sent)} tensors mismatched or missing, e.g. {bad[:5]}"
        )


def wait_all(refs: list, names: list[str], what: str, timeout_s: float) -> list:
    """ray.get of every ref under one deadline, collected as they finish, so the first failure is reported
    at once (a broadcast with a failed member would otherwise hold the others until the deadline)."""
    deadline, out = time.monotonic() + timeout_s, [None] * len(refs)
    pending = {ref: i for i, ref in enumerate(refs)}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            late = ", ".join(names[i] for i in sorted(pending.values()))
            raise RoleError(f"{late}: {what} did not finish within {timeout_s:.0f} s (train.timeout_s)")
        for ref in ready:
            i = pending.pop(ref)
            try:
                out[i] = ray.get(ref, timeout=max(1.0, deadline - time.monotonic()))
            except ray.exceptions.RayError as e:
                raise RoleError(f"{names[i]}: {what} failed: {e}") from e
    return out


def _subset(req: PromptRequest, samples: list[int]) -> PromptRequest:
    return replace(req, samples=tuple(samples))  # every other field (question, ...) carried over
