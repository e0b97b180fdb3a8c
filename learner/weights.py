"""Weight transport from the learner to the generators.

Protocol (both paths): the driver asks the learner for the new weights after an update, tags them with
the next policy version, and calls `GeneratorWorker.load_weights.remote(version, weights)`; a generator
pauses generation while it swaps and stamps every later trajectory with the version.

CPU path (the tested one): learner rank 0 returns HF-named CPU tensors [(name, tensor), ...] from a Ray
actor method, so they land in the object store once; `LearnerGroup.export_weights()` hands back that
ObjectRef. Passed as a top-level argument of `.remote(...)` Ray resolves it in each generator (one copy
per node, shared memory on the node). Nested inside a list or dict it would stay a ref.

GPU path (as OpenRLHF and veRL do it): a side process group between learner rank 0 (channel rank 0) and
every generator worker (channel ranks 1..n), created from a TCPStore that rank 0 hosts, independent of
the DeepSpeed world. The metadata (names, shapes, dtypes) travels through Ray; the tensors go by NCCL
broadcast from GPU memory, one tensor at a time, straight into buffers the generator then passes to
`reload_weights`. `BroadcastChannel` below is that channel; with backend="gloo" it runs on CPU (used to
test the protocol), with "nccl" on GPUs (untested here: no GPU on this machine).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import timedelta

import torch
from torch import Tensor


def weights_meta(named: Iterable[tuple[str, Tensor]]) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype name) per tensor: what a receiver needs to allocate buffers."""
    return [(name, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in named]


def weights_summary(named: list[tuple[str, Tensor]]) -> dict:
    """{"tensors", "bytes"} of a weight list (for logs and export timing)."""
    return {"tensors": len(named), "bytes": sum(t.numel() * t.element_size() for _, t in named)}


def check_names(named: list[tuple[str, Tensor]], expected: Iterable[str]) -> None:
    """Raise naming the missing / unexpected weights (a renamed layer must not be skipped silently)."""
    have, want = {n for n, _ in named}, set(expected)
    if have != want:
        raise ValueError(
            f"weight names differ: missing {sorted(want - have)[:10]}, unexpected {sorted(have - want)[:10]}"
        )


def _process_group(backend: str, store, rank: int, world_size: int, timeout: timedelta):
    import torch.distributed as dist

    classes = {"gloo": getattr(dist, "ProcessGroupGloo", None), "nccl": getattr(dist, "ProcessGroupNCCL", None)}
    if backend not in classes:
        raise ValueError(f"BroadcastChannel backend must be one of {sorted(classes)}, got {backend!r}")
    group_cls = classes[backend]
    if group_cls is None:
        raise RuntimeError(f"this torch build has no {backend} process group")
    if backend == "gloo":
        return group_cls(store, rank, world_size, timeout)
    return group_cls(store, rank, world_size)


class BroadcastChannel:
    """A process group of its own for weight broadcast: rank 0 sends, ranks 1..world_size-1 receive.

    Every member constructs it with the same master address/port (rank 0 hosts the TCPStore). It never
    touches the default torch.distributed world, so a DeepSpeed rank and a vLLM worker can both join.
    """

    def __init__(
        self,
        *,
        master_addr: str,
        master_port: int,
        rank: int,
        world_size: int,
        backend: str = "nccl",
        device: str = "cpu",
        timeout_s: float = 600.0,
    ):
        import torch.distributed as dist

        timeout = timedelta(seconds=timeout_s)
        self.store = dist.TCPStore(master_addr, master_port, world_size, is_master=rank == 0, timeout=timeout)
        self.pg = _process_group(backend, self.store, rank, world_size, timeout)
        self.rank, self.device = rank, torch.device(device)

    def _broadcast(self, t: Tensor) -> None:
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        self.pg.broadcast([t], opts).wait()

    def send(self, named: Iterable[tuple[str, Tensor]]) -> int:
        """Rank 0: broadcast every tensor in order (the order of weights_meta); returns the count."""
        if self.rank != 0:
            raise RuntimeError(f"BroadcastChannel.send is for rank 0, this is rank {self.rank}")
        n = 0
        for _name, t in named:
            self._broadcast(t.detach().to(self.device).contiguous())
            n += 1
        return n

    def receive(self, meta: list[tuple[str, tuple[int, ...], str]]) -> Iterator[tuple[str, Tensor]]:
        """Ranks >= 1: yield (name, tensor) in meta order as each broadcast arrives."""
        if self.rank == 0:
            raise RuntimeError("BroadcastChannel.receive is for ranks >= 1; rank 0 sends")
        for name, shape, dtype in meta:
            buf = torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)
            self._broadcast(buf)
            yield name, buf
