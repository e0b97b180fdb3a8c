"""A process group of its own for broadcasting weights from learner rank 0 to generator workers.

Shared code (engine/) because both ends use it: the learner's sender (learner/rank.py) and the receiver
inside the vLLM worker (workers/vllm_ext.py), which must not import learner/. The protocol around it is
described in learner/weights.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import timedelta

import torch
from torch import Tensor

WeightsMeta = list[tuple[str, tuple[int, ...], str]]  # (name, shape, dtype name) per tensor, in send order


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
        self.store: dist.TCPStore | None = dist.TCPStore(
            master_addr, master_port, world_size, is_master=rank == 0, timeout=timeout
        )
        self.pg = _process_group(backend, self.store, rank, world_size, timeout)
        self.rank, self.device = rank, torch.device(device)

    def close(self) -> None:
        """Drop the process group and the store (their sockets close; rank 0's port is free again)."""
        self.pg = self.store = None

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

    def receive(self, meta: WeightsMeta) -> Iterator[tuple[str, Tensor]]:
        """Ranks >= 1: yield (name, tensor) in meta order as each broadcast arrives."""
        if self.rank == 0:
            raise RuntimeError("BroadcastChannel.receive is for ranks >= 1; rank 0 sends")
        for name, shape, dtype in meta:
            buf = torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)
            self._broadcast(buf)
            yield name, buf


def weights_meta(named: Iterable[tuple[str, Tensor]]) -> WeightsMeta:
    """(name, shape, dtype name) per tensor: what a receiver needs to allocate its buffers."""
    return [(name, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in named]


def check_meta(named: list[tuple[str, Tensor]], meta: WeightsMeta) -> None:
    """Raise unless `named` is exactly what `meta` announced (names, order, shapes, dtypes): a receiver
    allocates its buffers from meta, so a difference would corrupt or hang the broadcast."""
    got = weights_meta(named)
    want = [(n, tuple(shape), dtype) for n, shape, dtype in meta]
    if got != want:
        diff = [w[0] for w, g in zip(want, got, strict=False) if w != g][:5]
        raise ValueError(
            f"weights differ from the announced metadata ({len(got)} vs {len(want)} tensors; first: {diff})"
        )
