"""Weight transport from the learner to the generators (config `sync.method`).

Protocol (both methods): after an update the driver tags the learner's weights with the next policy
version; every generator pauses generation while it swaps them in, reads its engine's weights back and
returns their per-tensor hashes (algo/fingerprint.tensor_hashes), which the driver compares by name with
the hashes learner rank 0 computed over exactly the tensors it sent. Only then does the version count.

object_store: learner rank 0 returns HF-named CPU tensors [(name, tensor), ...] from a Ray actor method,
so they land in the object store once; `LearnerGroup.export_weights()` hands back that ObjectRef. Passed
as a top-level argument of `GeneratorWorker.load_weights.remote(version, ref)` Ray resolves it in each
generator (one copy per node, shared memory on the node). Nested inside a list or dict it would stay a ref.

collective (as OpenRLHF and veRL do it): a side process group between learner rank 0 (channel rank 0)
and every generator's vLLM worker (channel ranks 1..n), created for each sync from a TCPStore that rank 0
hosts, independent of the DeepSpeed world (engine/broadcast.BroadcastChannel). The metadata (names,
shapes, dtypes) travels through Ray as plain values; the tensors go one at a time by broadcast (gloo on
CPU, nccl on GPU: backend = learner.backend) into buffers inside the vLLM worker, which reloads them
through the same path as object_store. The receiver runs in the vLLM worker (a collective_rpc with plain
arguments), so it works whether or not vLLM runs its engine in another process.
"""

from __future__ import annotations

from torch import Tensor


def weights_summary(named: list[tuple[str, Tensor]]) -> dict:
    """{"tensors", "bytes"} of a weight list (for logs and export timing)."""
    return {"tensors": len(named), "bytes": sum(t.numel() * t.element_size() for _, t in named)}
