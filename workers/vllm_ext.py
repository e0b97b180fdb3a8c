"""vLLM worker extension: reload weights in place and read the live weights back under HF names.

vLLM mixes this class into its worker (``LLM(worker_extension_cls="workers.vllm_ext.WeightSyncExtension")``)
and its methods are reached with ``llm.collective_rpc("steprl_...", args=...)``. For
``steprl_reload_weights`` the engine must run in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so that
its arguments, which are tensors, are handed over by reference instead of being serialised to another
process. ``steprl_receive_weights`` (the collective sync) and ``steprl_weight_hashes`` take and return
plain values only, so they work the same with the engine in another process.

Why a read-back is needed: on CPU, vLLM packs every linear layer's weight into a oneDNN / sgl kernel
buffer and replaces the ``weight`` parameter with an empty tensor, so ``named_parameters()`` no longer
shows what the engine multiplies with. We recover such a weight by pushing an identity matrix through
the layer's own kernel (``x = I  ->  x @ W.T = W.T``), which is exact in float32. Fused layers
(``qkv_proj``, ``gate_up_proj``) are split back into their HF parts with the model's
``packed_modules_mapping`` and the layer's ``output_sizes``; the vocab padding rows vLLM adds to the
embedding are cut off. The result is named and shaped like the HF model's ``named_parameters()``, so
its per-tensor hashes can be compared by name with the learner's. Tensor parallelism (sharded weights) is not
handled: the read-back assumes one worker holds the whole model.

A second CPU quirk, found by comparing logprobs with the HF model: a tied ``lm_head`` shares the
embedding's Parameter but computes logits with its own packed copy, made once at start-up. vLLM's
in-place reload re-processes only the modules whose parameters it loaded, and ``named_parameters()``
lists the shared tensor under the embedding only, so the ``lm_head`` kept sampling with the initial
weights. The reload therefore also sends the tied alias (below), and the read-back checks every packed
copy against its weight (a mismatch is an error).

Reload warnings. vLLM's layerwise reload (vllm/model_executor/model_loader/reload/layerwise.py,
``finalize_layerwise_processing``) warns ``<Class>: Failed to load weights`` for every module that has
loadable tensors (parameters *or buffers*) but received none, and then puts its old tensors back.
Two such modules are expected here:

* ``ParallelLMHead`` of a tied model: the HF model's ``named_parameters()`` holds the shared tensor
  once, as ``model.embed_tokens.weight``, so vLLM's ``lm_head`` gets nothing and is not reprocessed
  (that is the stale packed copy above). We fix this at the source: the reload also sends each tied
  alias (here ``lm_head.weight``) with its owner's tensor, so vLLM loads and repacks the lm_head itself
  and the warning does not fire. (A model whose ``load_weights`` skipped ``lm_head.`` would warn,
  truthfully, and fail the read-back check.)
* ``RotaryEmbedding``: it has no weights, only the non-persistent ``cos_sin_cache`` buffer computed
  from the config, which vLLM counts as loadable. The buffer is put back untouched, so the warning is
  noise; vLLM has no supported way to mark a module as intentionally unloaded, so
  ``install_reload_log_filter`` drops exactly that one message (exact class name: a rotary subclass
  with learnable weights, e.g. FourierRotaryEmbedding, still warns).

The method names carry a ``steprl_`` prefix because vLLM refuses an extension whose attribute names
clash with the worker's own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

# A vLLM layer: a torch Module with attributes vLLM sets on it (cpu_linear, input_size, output_size,
# params_dtype, output_sizes), which torch's Module type cannot know of, hence Any.
_VllmLayer = Any

_PROBE_ROWS = 1024  # identity rows per kernel call: bounds the probe's memory for wide layers

# The logger of vllm/model_executor/model_loader/reload/layerwise.py (vLLM's init_logger(__name__)).
_RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"
_FAILED_LOAD_MSG = "%s: Failed to load weights"
# Modules whose "Failed to load weights" is expected: no learnable tensor, only a buffer computed from
# the config (cos_sin_cache) that the reload restores unchanged. Exact class names, never a pattern.
_WEIGHTLESS_MODULES = frozenset({"RotaryEmbedding"})


class _WeightlessModuleReloadFilter(logging.Filter):
    """Drops vLLM's "Failed to load weights" warning for the modules in _WEIGHTLESS_MODULES only."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (record.msg == _FAILED_LOAD_MSG and len(args) == 1 and args[0] in _WEIGHTLESS_MODULES)


def install_reload_log_filter() -> None:
    """Silence the benign RotaryEmbedding reload warning (see the module docstring); idempotent.

    Called by steprl_reload_weights, i.e. in the process that runs the engine. Filters survive vLLM's
    logging dictConfig (it resets handlers of existing vllm.* loggers, not their filters), and vLLM need
    not be imported first: the logger is looked up by name.
    """
    logger = logging.getLogger(_RELOAD_LOGGER)
    if not any(isinstance(f, _WeightlessModuleReloadFilter) for f in logger.filters):
        logger.addFilter(_WeightlessModuleReloadFilter())


def _with_tied_aliases(
    model: torch.nn.Module, weights: list[tuple[str, torch.Tensor]]
) -> list[tuple[str, torch.Tensor]]:
    """weights plus (alias, tensor) for each parameter name that shares its Parameter with a sent name.

    A tied lm_head is the case: the HF weights hold the shared tensor once (model.embed_tokens.weight),
    so without its alias vLLM would neither load nor reprocess lm_head (see the module docstring).
    """
    sent = {name: tensor for name, tensor in weights}
    names_of: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(param), []).append(name)
    extra: list[tuple[str, torch.Tensor]] = []
    for names in names_of.values():
        owners = [n for n in names if n in sent]
        if len(names) > 1 and owners:
            extra.extend((alias, sent[owners[0]]) for alias in names if alias not in sent)
    return list(weights) + extra


def _probe_packed_weight(module: _VllmLayer, in_features: int, out_features: int, dtype: torch.dtype) -> torch.Tensor:
    """Recover W [out, in] from a CPU-packed linear kernel by multiplying it with the identity.

    Costs one [in, in] x [in, out] matmul: trivial for the tiny CPU models, seconds for a 0.5B one.
    """
    cols: list[torch.Tensor] = []
    for start in range(0, in_features, _PROBE_ROWS):
        stop = min(start + _PROBE_ROWS, in_features)
        eye = torch.zeros(stop - start, in_features, dtype=dtype)
        eye[:, start:stop] = torch.eye(stop - start, dtype=dtype)
        cols.append(module.cpu_linear(eye, module.weight, None))  # [rows, out] = W[:, rows].T
    weight = torch.cat(cols, dim=0).t().contiguous()
    if weight.shape != (out_features, in_features):
        raise RuntimeError(
            f"weight read-back of {type(module).__name__} gave shape {tuple(weight.shape)}, "
            f"expected {(out_features, in_features)}"
        )
    return weight


def _live_tensor(module: _VllmLayer, param_name: str, param: torch.Tensor) -> torch.Tensor:
    """The tensor the engine really computes with for module.<param_name>."""
    if param_name == "weight" and param.numel() == 0 and hasattr(module, "cpu_linear"):
        return _probe_packed_weight(module, module.input_size, module.output_size, module.params_dtype)
    tensor = param.detach()
    org_vocab = getattr(module, "org_vocab_size", None)
    if org_vocab is not None and param_name == "weight":
        tensor = tensor[:org_vocab]  # vLLM pads the vocabulary to a multiple of 64 with zero rows
    return tensor


def _kept_weight_modules(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    """Modules (embedding, lm_head) that keep their weight but may compute with a packed CPU copy."""
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if hasattr(module, "cpu_linear") and isinstance(weight, torch.Tensor) and weight.numel() > 0:
            yield name, module


def _check_packed_copy(name: str, module: _VllmLayer) -> None:
    """Raise if the kernel copy a module computes with differs from its weight parameter."""
    out_features, in_features = module.weight.shape
    live = _probe_packed_weight(module, in_features, out_features, module.weight.dtype)
    if not torch.equal(live, module.weight.detach()):
        err = (live - module.weight.detach()).abs().max().item()
        raise RuntimeError(
            f"{name}: the packed CPU kernel copy differs from {name}.weight (max abs "
            f"difference {err:.3g}); the module was not repacked after a weight reload"
        )


def _unfuse(
    name: str, tensor: torch.Tensor, module: _VllmLayer, packed: dict[str, list[str]]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Split qkv_proj / gate_up_proj (weight or bias) back into the HF tensors they were fused from."""
    module_path, _, param_name = name.rpartition(".")
    parent, _, leaf = module_path.rpartition(".")
    parts = packed.get(leaf)
    if parts is None:
        yield name, tensor
        return
    sizes = list(module.output_sizes)
    if len(sizes) != len(parts) or sum(sizes) != tensor.shape[0]:
        raise RuntimeError(f"cannot split {name} of shape {tuple(tensor.shape)} into {parts} with output_sizes {sizes}")
    for part, piece in zip(parts, torch.split(tensor, sizes, dim=0), strict=True):
        yield f"{parent}.{part}.{param_name}", piece


class WeightSyncExtension:
    """Mixed into vLLM's worker; ``self`` is the worker, ``self.model_runner`` holds the model."""

    if TYPE_CHECKING:  # declared for mypy only: at run time the vLLM worker this class is mixed into has it
        model_runner: Any

    def steprl_reload_weights(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named full weights into the running model (fusing, padding and repacking included)."""
        install_reload_log_filter()
        model = self.model_runner.get_model()
        self.model_runner.reload_weights(weights_iterator=iter(_with_tied_aliases(model, weights)))

    def steprl_named_weights(self) -> list[tuple[str, torch.Tensor]]:
        """The live weights as HF-named, HF-shaped tensors (tied tensors once, as named_parameters())."""
        model = self.model_runner.get_model()
        for name, module in _kept_weight_modules(model):
            _check_packed_copy(name, module)
        packed = getattr(model, "packed_modules_mapping", {}) or {}
        modules = dict(model.named_modules())
        out: list[tuple[str, torch.Tensor]] = []
        for name, param in model.named_parameters():  # deduplicates a tied lm_head / embedding
            module_path, _, param_name = name.rpartition(".")
            module = modules[module_path]
            out.extend(_unfuse(name, _live_tensor(module, param_name, param), module, packed))
        return out

    def steprl_weight_hashes(self, dtypes: dict[str, str]) -> dict[str, str]:
        """algo.fingerprint.tensor_hashes of the live weights, each cast to dtypes[name] (the dtype it was
        sent in): a sender's float32 tensor loaded into a bfloat16 engine must hash as float32 again, and
        any rounding the engine applied then shows as a mismatch. Only the hashes leave the worker."""
        from algo.fingerprint import tensor_hashes  # imported here: the worker process has it

        live = self.steprl_named_weights()
        return tensor_hashes((n, t.to(getattr(torch, dtypes[n])) if n in dtypes else t) for n, t in live)

    def steprl_receive_weights(
        self,
        master_addr: str,
        master_port: int,
        rank: int,
        world_size: int,
        meta: list[tuple[str, tuple[int, ...], str]],
        backend: str,
        device: str,
        timeout_s: float,
    ) -> None:
        """Join a BroadcastChannel as `rank`, receive every tensor of `meta` and reload them like
        steprl_reload_weights. Plain-value arguments only, so it runs the same whether vLLM's engine is in
        this process or another one (collective_rpc cannot carry tensors across processes)."""
        from engine.broadcast import BroadcastChannel

        channel = BroadcastChannel(
            master_addr=master_addr,
            master_port=master_port,
            rank=rank,
            world_size=world_size,
            backend=backend,
            device=device,
            timeout_s=timeout_s,
        )
        try:
            # Every tensor first, then one reload: the reload must see the whole model at once, as in
            # the object-store path (the buffers cost one model copy, as the object store's does).
            weights = list(channel.receive(meta))
        finally:
            channel.close()
        self.steprl_reload_weights(weights)
