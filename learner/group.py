"""Driver-side handle of the DeepSpeed learner: N LearnerRank Ray actors forming one data-parallel world.

Rank 0 hosts the torch.distributed rendezvous. Its address and a free port are found by a tiny task
scheduled where rank 0 will run (the placement-group bundle of rank 0, or a node rank 0 is then pinned
to), so the port is free on the right host. Every ray.get/wait has a deadline and its error names the
rank and the call; completions are collected one at a time, so a failed rank is reported at once
instead of after the others time out in a collective.
"""

from __future__ import annotations

import inspect
import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from engine.batching import shard
from engine.build import free_port
from engine.process import thread_env
from learner.rank import LearnerRank


class LearnerError(RuntimeError):
    """A learner rank died, failed or missed its deadline; the message names the rank and the call."""


_SET_BY_GROUP = ("rank", "world_size", "master_addr", "master_port", "log_file")


@ray.remote(num_cpus=0)
def _rendezvous_address() -> tuple[str, str, int]:
    from engine.build import free_port, node_ip

    return ray.get_runtime_context().get_node_id(), node_ip(), free_port()


def _rank_kwargs_check(rank_kwargs: dict) -> None:
    params = inspect.signature(LearnerRank.__init__).parameters
    unknown = sorted(set(rank_kwargs) - set(params))
    if unknown:
        raise TypeError(f"LearnerGroup: unknown LearnerRank arguments {unknown}")
    fixed = sorted(set(rank_kwargs) & set(_SET_BY_GROUP))
    if fixed:
        raise TypeError(f"LearnerGroup: {fixed} are set by the group, remove them from rank_kwargs")
    missing = sorted(
        n
        for n, p in params.items()
        if n != "self" and n not in _SET_BY_GROUP and p.default is inspect.Parameter.empty and n not in rank_kwargs
    )
    if missing:
        raise TypeError(f"LearnerGroup: rank_kwargs is missing {missing}")


class LearnerGroup:
    def __init__(
        self,
        *,
        num_ranks: int,
        rank_kwargs: dict,
        cpus_per_rank: float = 1.0,
        gpus_per_rank: float = 0.0,
        timeout_s: float = 600.0,
        placement_group=None,
        bundle_indices: list[int] | None = None,
        scheduling_strategy=None,
        env_vars: dict | None = None,
        log_dir: str | None = None,
    ):
        """rank_kwargs: every LearnerRank argument except rank, world_size, master_addr, master_port and
        log_file. With a placement group, rank i runs in bundle bundle_indices[i] (default: bundle i).
        With log_dir, rank i writes its output to log_dir/learner-<i>.log."""
        if num_ranks < 1:
            raise ValueError(f"num_ranks must be >= 1, got {num_ranks}")
        _rank_kwargs_check(rank_kwargs)
        self.num_ranks, self.timeout_s = num_ranks, timeout_s
        self.last_export: dict | None = None  # summary of the latest export_weights (tensors, bytes, hashes)
        self.backend = rank_kwargs["backend"]  # also the collective weight sync's (gloo on CPU, nccl on GPU)
        self._meta: list | None = None  # weights metadata of the collective sync (weight_channel)
        strategies = self._strategies(num_ranks, placement_group, bundle_indices, scheduling_strategy)
        node_id, addr, port = self.wait(
            [_rendezvous_address.options(scheduling_strategy=strategies[0]).remote()],
            "find the rendezvous address",
            names=["rank 0 placement"],
        )[0]
        if placement_group is None:  # pin rank 0 to the host whose port we just found free
            strategies[0] = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
        env = {
            **thread_env(rank_kwargs.get("threads", 1)),
            **({"DS_ACCELERATOR": "cpu"} if rank_kwargs.get("backend") == "gloo" else {}),
            **(env_vars or {}),
        }
        actor_cls = ray.remote(LearnerRank)
        self.ranks: list[Any] = [  # Ray actor handles of LearnerRank
            actor_cls.options(
                num_cpus=cpus_per_rank,
                num_gpus=gpus_per_rank,
                scheduling_strategy=strategies[r],
                runtime_env={"env_vars": env},
            ).remote(
                rank=r,
                world_size=num_ranks,
                master_addr=addr,
                master_port=port,
                log_file=f"{log_dir}/learner-{r}.log" if log_dir else None,
                **rank_kwargs,
            )
            for r in range(num_ranks)
        ]
        self.master = (addr, port)
        try:
            self._call_all("global_steps", what="start (DeepSpeed init)")  # every constructor finished
        except Exception:
            self.shutdown()  # do not leave half a world holding CPUs
            raise

    @staticmethod
    def _strategies(n, placement_group, bundle_indices, scheduling_strategy) -> list:
        if placement_group is None:
            return [scheduling_strategy or "DEFAULT"] * n
        if scheduling_strategy is not None:
            raise ValueError("give either placement_group (+ bundle_indices) or scheduling_strategy, not both")
        idx = list(range(n)) if bundle_indices is None else list(bundle_indices)
        if len(idx) != n:
            raise ValueError(f"bundle_indices has {len(idx)} entries for {n} learner ranks")
        return [
            PlacementGroupSchedulingStrategy(
                placement_group=placement_group,
                placement_group_bundle_index=i,
                placement_group_capture_child_tasks=False,
            )
            for i in idx
        ]

    # ---- waiting with deadlines ----

    def wait(self, refs: list, what: str, names: list[str] | None = None) -> list:
        """ray.get every ref within timeout_s; errors name the rank and the call."""
        names = names or [f"learner rank {i}" for i in range(len(refs))]
        deadline, out = time.monotonic() + self.timeout_s, [None] * len(refs)
        pending = {ref: i for i, ref in enumerate(refs)}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                late = [names[i] for i in sorted(pending.values())]
                raise LearnerError(
                    f"{', '.join(late)}: '{what}' did not finish within {self.timeout_s:.0f}s (train.timeout_s)"
                )
            for ref in ready:
                i = pending.pop(ref)
                try:
                    out[i] = ray.get(ref, timeout=max(1.0, deadline - time.monotonic()))
                except ray.exceptions.RayError as e:
                    raise LearnerError(f"{names[i]} failed in '{what}': {e}") from e
        return out

    def _call_all(self, method: str, *args, what: str | None = None) -> list:
        refs = [getattr(r, method).remote(*args) for r in self.ranks]
        return self.wait(refs, what or method)

    # ---- training ----

    def train_step(self, batch: dict) -> dict:
        """Split the batch into equal contiguous shards (B % num_ranks == 0), train, average metrics."""
        shards = shard(batch, self.num_ranks)
        refs = [r.train_step.remote(s) for r, s in zip(self.ranks, shards, strict=True)]
        return average_metrics(self.wait(refs, "train_step"))

    def logprobs(self, batch: dict):
        """[B, L] log-probs of the batch under the current weights (rows in batch order)."""
        import torch

        refs = [r.logprobs.remote(s) for r, s in zip(self.ranks, shard(batch, self.num_ranks), strict=True)]
        return torch.cat(self.wait(refs, "logprobs"))

    # ---- weights ----

    def export_weights(self) -> ray.ObjectRef:
        """ObjectRef of rank 0's [(hf_name, cpu tensor), ...] for generators' load_weights.remote(version, ref).
        Every rank takes part (ZeRO-3 gathers). Only the small summaries are fetched here (they carry any
        error), the weights stay in the object store; last_export["hashes"] are the tensors' hashes."""
        pairs = [r.export_weights.options(num_returns=2).remote() for r in self.ranks]
        self.last_export = self.wait([summary for summary, _ in pairs], "export_weights")[0]
        return pairs[0][1]

    def weight_channel(self, world_size: int) -> dict:
        """Plain-value arguments of one collective sync with world_size - 1 receivers (learner/weights.py):
        rank 0's address and a port free on its host now, the backend (learner.backend) and the device
        tensors travel on, the metadata of rank 0's weights and the deadline. The metadata is gathered
        once (names, shapes and dtypes do not change during a run)."""
        if self._meta is None:
            self._meta = self._call_all("weights_meta", what="weights_meta (for the collective sync)")[0]
        port = self.wait([self.ranks[0].__ray_call__.remote(lambda _rank: free_port())], "find a free port")[0]
        return {
            "master_addr": self.master[0],
            "master_port": port,
            "world_size": world_size,
            "backend": self.backend,
            "device": "cuda" if self.backend == "nccl" else "cpu",  # nccl moves CUDA tensors only
            "meta": self._meta,
            "timeout_s": self.timeout_s,
        }

    def send_weights(self, channel: dict) -> list:
        """Start the broadcast of `channel` (from weight_channel) on every rank (ZeRO-3 gathers) without
        waiting: a broadcast completes only when the receivers take part, so the caller starts them too
        and waits on all the refs together. Rank 0's ref holds {"tensors", "send_s", "hashes"}."""
        c = channel
        return [
            r.send_weights.remote(
                c["master_addr"], c["master_port"], c["world_size"], c["backend"], c["meta"], c["timeout_s"]
            )
            for r in self.ranks
        ]

    def fingerprint(self) -> dict:
        """Weights fingerprint of rank 0, after checking that every rank holds the same weights."""
        from algo.fingerprint import fingerprints_match

        fps = self.rank_fingerprints()
        bad = [i for i, fp in enumerate(fps) if not fingerprints_match(fps[0], fp)]
        if bad:
            raise RuntimeError(f"learner ranks {bad} hold weights different from rank 0: {fps}")
        return fps[0]

    def rank_fingerprints(self) -> list[dict]:
        return self._call_all("fingerprint")

    def global_steps(self) -> int:
        return self._call_all("global_steps")[0]

    # ---- checkpoints ----

    def save_checkpoint(self, ckpt_dir: str, client_state: dict) -> str:
        self._call_all("save_checkpoint", str(ckpt_dir), client_state)
        return str(ckpt_dir)

    def load_checkpoint(self, ckpt_dir: str) -> dict:
        return self._call_all("load_checkpoint", str(ckpt_dir))[0]

    def save_hf(self, out_dir: str) -> str:
        return self._call_all("save_hf", str(out_dir))[0]

    def shutdown(self) -> None:
        for r in self.ranks:
            ray.kill(r, no_restart=True)
        self.ranks = []


def average_metrics(per_rank: list[dict]) -> dict:
    """Mean over ranks (ranks already all-reduce their metrics, so this is a cross-check more than a
    reduction); a key missing on some rank is an error, not a silent drop."""
    keys = set(per_rank[0])
    for i, m in enumerate(per_rank):
        if set(m) != keys:
            raise ValueError(f"learner rank {i} returned metrics {sorted(m)}, rank 0 returned {sorted(keys)}")
    return {k: sum(float(m[k]) for m in per_rank) / len(per_rank) for k in sorted(keys)}
