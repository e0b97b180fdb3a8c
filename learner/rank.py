"""One DeepSpeed data-parallel rank of the policy learner (a plain class; LearnerGroup makes it an actor).

A train step is PPO (Schulman et al. 1707.06347) on a batch of step-segmented samples:
1. recompute the log-probs of the batch with the current weights: they are the "old" policy of the
   PPO ratio (the behaviour log-probs from vLLM differ by kernels and dtype; their mean gap is reported
   as `logprob_diff`, the sampler/learner mismatch);
2. ppo_epochs passes, each over mini_batches shuffled mini-batches, one optimizer update per mini-batch,
   with micro-batch gradient accumulation; the objective is learner/objective.py.
Departure from a plain DeepSpeed loop: the micro-batch losses are weighted by their share of the global
mini-batch (engine/batching.py) and backward runs with scale_wrt_gas=False, so gradients do not depend
on how the batch was cut into micro-batches or ranks. The accumulation boundary is set explicitly
because the number of micro-batches may change from one step to the next.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from algo.batch import shift_logprobs, valid_token_mask
from algo.fingerprint import tensor_hashes, weights_fingerprint
from algo.guided import weight_stats as guided_stats
from algo.offpolicy import weight_stats, weight_sums
from engine.batching import (
    accumulated_step,
    all_reduce_max,
    all_reduce_sum,
    batch_size,
    check_rows,
    epochs_of_updates,
    forward_logits,
    micro_slices,
    to_device,
)
from engine.broadcast import BroadcastChannel, check_meta, weights_meta
from engine.build import (
    TrainSettings,
    build_engine,
    init_distributed,
    load_checkpoint,
    model_init_context,
    save_checkpoint,
)
from engine.process import prepare_process, role_device, role_dtype, seed_everything
from learner.objective import GUIDED_PEAK, GUIDED_SUMS, ObjectiveCoefs, check_policy_batch, micro_objective, units
from learner.weights import weights_summary

METRICS = ("loss", "policy_loss", "kl", "entropy", "clip_frac", "approx_kl", "sft_nll")
WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".safetensors.index.json", ".bin.index.json")


class LearnerRank:
    def __init__(
        self,
        *,
        rank: int,
        world_size: int,
        master_addr: str,
        master_port: int,
        model_dir: str,
        backend: str,
        train: TrainSettings,
        objective: ObjectiveCoefs,
        seed: int,
        threads: int = 1,
        timeout_s: float = 600.0,
        deterministic: bool = False,
        trust_remote_code: bool = False,
        log_file: str | None = None,
        device: str | None = None,
    ):
        """device: where the model and batches live; None = the GPU Ray gave this actor, else the CPU."""
        from transformers import AutoModelForCausalLM

        prepare_process(threads, log_file=log_file, deterministic=deterministic)
        seed_everything(seed)
        self.rank, self.world_size, self.model_dir = rank, world_size, str(model_dir)
        self.train_settings, self.coefs = train, objective
        self.device = role_device(device)
        # The dtype the generators run in (model.dtype, as TrainSettings.bf16): DeepSpeed's bf16 mode trains
        # a bf16 copy of the model with fp32 master weights in the optimizer; weights leave in this dtype.
        self.weights_dtype = role_dtype("bfloat16" if train.bf16 else "float32", self.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # NCCL and DeepSpeed use the current device
        init_distributed(rank, world_size, master_addr, master_port, backend, timeout_s=timeout_s)
        with model_init_context(train):  # ZeRO-3: built already partitioned (engine/build.py)
            model = AutoModelForCausalLM.from_pretrained(
                self.model_dir, dtype=torch.float32, trust_remote_code=trust_remote_code
            )
        self.engine = build_engine(model, train, self.device)
        self.zero3 = train.zero_stage == 3
        self._guided_peak = 0.0  # largest guided weight of this train_step on this rank (algo.guided)

    # ---- training ----

    def logprobs(self, batch: dict) -> torch.Tensor:
        """[B, L] float32 log-probs of the batch under the current weights (0 at position 0), on the CPU."""
        check_rows(batch)
        return self._logprobs(to_device(batch, self.device)).cpu()

    @torch.no_grad()
    def _logprobs(self, batch: dict) -> torch.Tensor:
        """logprobs() of a batch already on self.device, left there."""
        self.engine.eval()
        out = []
        for s in micro_slices(batch_size(batch), self.train_settings.micro_batch_size):
            ids = batch["input_ids"][s]
            out.append(shift_logprobs(forward_logits(self.engine, ids, batch["attention_mask"][s]), ids))
        self.engine.train()
        return torch.cat(out)

    def train_step(self, batch: dict) -> dict:
        """PPO on this rank's shard; returns global (all-rank) metrics as floats."""
        check_rows(batch)
        check_policy_batch(batch, self.coefs)
        batch = to_device(batch, self.device)
        old = self._logprobs(batch)
        mask = valid_token_mask(batch)
        if "guided" in batch:  # gold samples have no behaviour log-probs: the sampler / learner gap leaves them out
            mask = mask * (1.0 - batch["guided"].float())[:, None]
        cap = self.coefs.tis_cap if self.coefs.off_policy == "decoupled" else None
        sums = all_reduce_sum(weight_sums(old, batch["behavior_logprobs"].float(), mask, cap), self.device)
        guided = self.coefs.guided_max_weight is not None
        self._guided_peak = 0.0
        metrics = epochs_of_updates(
            batch,
            epochs=self.train_settings.epochs,
            mini_batches=self.train_settings.mini_batches,
            keys=METRICS + (GUIDED_SUMS if guided else ()),
            update=lambda mini, rows: self._update(mini, old[rows]),
        )
        if guided:
            metrics.update(self._guided_metrics(metrics))
        return {**metrics, **weight_stats(sums)}

    def _guided_metrics(self, metrics: dict) -> dict:
        """guided/weight_mean, _std, _max over the guided tokens of every update of the step (algo/guided.py),
        taking the sums out of `metrics`. The sums are averaged over updates like every metric, which leaves their
        ratios alone; the max is reduced over ranks by max."""
        total, total_sq, tokens = (metrics.pop(key) for key in GUIDED_SUMS)
        peak = float(all_reduce_max(torch.tensor([self._guided_peak]), self.device)[0])
        return guided_stats(total, total_sq, tokens, peak)

    def _update(self, mini: dict, old: torch.Tensor) -> tuple[dict, float, float]:
        """One optimizer step on a mini-batch; returns global metrics, grad norm, lr."""

        def loss_fn(micro, rows, weights):
            logits = forward_logits(self.engine, micro["input_ids"], micro["attention_mask"])
            loss, metrics = micro_objective(logits, micro, old[rows], weights, self.coefs)
            # a max, not a sum: kept apart from the metrics accumulated_step adds up
            self._guided_peak = max(self._guided_peak, metrics.pop(GUIDED_PEAK, 0.0))
            return loss, metrics

        # units(): (policy aggregation units, SFT tokens, response tokens)
        return accumulated_step(
            self.engine,
            mini,
            micro_batch_size=self.train_settings.micro_batch_size,
            units_fn=lambda micro: units(micro, self.coefs),
            loss_fn=loss_fn,
        )

    # ---- weights ----

    def named_weights(self) -> list[tuple[str, torch.Tensor]]:
        """Full HF-named weights (Qwen2ForCausalLM.named_parameters() names) as CPU tensors on rank 0;
        [] on other ranks. Under ZeRO-3 every rank must call it (parameters are gathered one by one,
        so the peak extra memory is one tensor, not the model). They leave in the generators' dtype
        (model.dtype): a no-op cast while the trained copy is already in it (DeepSpeed bf16 keeps the fp32
        master weights in the optimizer), and the guarantee that nothing else is ever sent or hashed."""
        import deepspeed

        out = []
        for name, p in self.engine.module.named_parameters():
            with deepspeed.zero.GatheredParameters([p], enabled=self.zero3):
                if self.rank == 0:
                    out.append((name, p.detach().to("cpu", dtype=self.weights_dtype, copy=True)))
        return out

    def export_weights(self) -> tuple[dict, list[tuple[str, torch.Tensor]]]:
        """(summary, named_weights()): called with num_returns=2 so the driver can fetch the small
        summary (and any error) while the weights stay in the object store. Rank 0's summary carries
        "hashes", tensor_hashes of exactly these tensors (what each generator's read-back must equal)."""
        named = self.named_weights()
        return {"rank": self.rank, **weights_summary(named), "hashes": tensor_hashes(named)}, named

    def weights_meta(self) -> list:
        """(name, shape, dtype) of each tensor named_weights() returns, in its order, on rank 0 ([] on
        the others): what broadcast receivers allocate. Every rank calls it (ZeRO-3 gathers)."""
        return weights_meta(self.named_weights())

    def send_weights(
        self, master_addr: str, master_port: int, world_size: int, backend: str, meta: list, timeout_s: float
    ) -> dict:
        """The collective sync (learner/weights.py): every rank calls it (ZeRO-3 gathers); rank 0 hosts a
        BroadcastChannel of world_size members at master_addr:master_port and broadcasts the weights,
        which must match `meta` (what the receivers allocated). Returns rank 0's {"tensors", "send_s",
        "hashes"} (send_s: channel set-up, gather, hashing and broadcast; hashes of exactly the tensors
        sent), {} on the other ranks."""
        if self.rank != 0:
            self.named_weights()  # takes part in ZeRO-3's gathers
            return {}
        start = time.perf_counter()
        # The store first: receivers that try to connect before it listens back off for ~0.5 s.
        channel = BroadcastChannel(
            master_addr=master_addr,
            master_port=master_port,
            rank=0,
            world_size=world_size,
            backend=backend,
            device=str(self.device),
            timeout_s=timeout_s,
        )
        try:
            named = self.named_weights()
            check_meta(named, meta)  # on error, closing the channel fails the receivers too
            hashes = tensor_hashes(named)
            count = channel.send(named)
        finally:
            channel.close()
        return {"tensors": count, "send_s": time.perf_counter() - start, "hashes": hashes}

    def fingerprint(self) -> dict:
        """Fingerprint of this rank's full weights (a collective under ZeRO-3: call on every rank)."""
        import deepspeed

        total = {"sum": 0.0, "sumsq": 0.0, "abs_sum": 0.0, "numel": 0}
        for name, p in self.engine.module.named_parameters():
            with deepspeed.zero.GatheredParameters([p], enabled=self.zero3):
                fp = weights_fingerprint([(name, p)])
            total = {k: total[k] + fp[k] for k in total}
        return total

    # ---- checkpoints and export ----

    def save_checkpoint(self, ckpt_dir: str, client_state: dict) -> str:
        """DeepSpeed engine state (weights, optimizer, scheduler, step) + this rank's RNG state.
        Every rank must call it with the same directory (on a filesystem all ranks share)."""
        save_checkpoint(self.engine, ckpt_dir, client_state, f"rng_rank{self.rank}.json")
        return str(ckpt_dir)

    def load_checkpoint(self, ckpt_dir: str) -> dict:
        """Restore what save_checkpoint wrote; returns the client_state."""
        return load_checkpoint(self.engine, ckpt_dir, f"rng_rank{self.rank}.json", f"learner rank {self.rank}")

    def global_steps(self) -> int:
        """Optimizer updates taken so far (restored by load_checkpoint)."""
        return int(self.engine.global_steps)

    def save_hf(self, out_dir: str) -> str:
        """Rank 0 writes a plain HF model dir (config, safetensors, tokenizer files from model_dir).
        Every rank must call it (ZeRO-3 gathers)."""
        named = self.named_weights()
        if self.rank == 0:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            self.engine.module.save_pretrained(out, state_dict=dict(named), safe_serialization=True)
            for f in sorted(Path(self.model_dir).iterdir()):  # tokenizer and any other non-weight files
                if f.is_file() and not f.name.endswith(WEIGHT_FILES) and not (out / f.name).exists():
                    shutil.copy2(f, out / f.name)
        return str(out_dir)
