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
from pathlib import Path

import torch

from algo.batch import shift_logprobs, valid_token_mask
from algo.fingerprint import weights_fingerprint
from engine.batching import (
    accumulated_step,
    all_reduce_sum,
    batch_size,
    check_rows,
    epochs_of_updates,
    forward_logits,
    micro_slices,
)
from engine.build import TrainSettings, build_engine, init_distributed, load_checkpoint, save_checkpoint
from engine.process import prepare_process, seed_everything
from learner.objective import ObjectiveCoefs, check_policy_batch, micro_objective, units
from learner.weights import BroadcastChannel, weights_summary

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
    ):
        from transformers import AutoModelForCausalLM

        prepare_process(threads, log_file=log_file, deterministic=deterministic)
        seed_everything(seed)
        self.rank, self.world_size, self.model_dir = rank, world_size, str(model_dir)
        self.train_settings, self.coefs = train, objective
        init_distributed(rank, world_size, master_addr, master_port, backend, timeout_s=timeout_s)
        model = AutoModelForCausalLM.from_pretrained(
            self.model_dir, dtype=torch.float32, trust_remote_code=trust_remote_code
        )
        self.engine = build_engine(model, train)
        self.zero3 = train.zero_stage == 3

    # ---- training ----

    @torch.no_grad()
    def logprobs(self, batch: dict) -> torch.Tensor:
        """[B, L] log-probs of the batch under the current weights (0 at position 0)."""
        check_rows(batch)
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
        old = self.logprobs(batch)
        mask = valid_token_mask(batch)
        gap = torch.stack([((old - batch["behavior_logprobs"].float()).abs() * mask).sum(), mask.sum()])
        gap = all_reduce_sum(gap)
        metrics = epochs_of_updates(
            batch,
            epochs=self.train_settings.epochs,
            mini_batches=self.train_settings.mini_batches,
            keys=METRICS,
            update=lambda mini, rows: self._update(mini, old[rows]),
        )
        return {**metrics, "logprob_diff": float(gap[0] / gap[1].clamp_min(1.0)), "tokens": float(gap[1])}

    def _update(self, mini: dict, old: torch.Tensor) -> tuple[dict, float, float]:
        """One optimizer step on a mini-batch; returns global metrics, grad norm, lr."""

        def loss_fn(micro, rows, weights):
            logits = forward_logits(self.engine, micro["input_ids"], micro["attention_mask"])
            return micro_objective(logits, micro, old[rows], weights, self.coefs)

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
        so the peak extra memory is one tensor, not the model)."""
        import deepspeed

        out = []
        for name, p in self.engine.module.named_parameters():
            with deepspeed.zero.GatheredParameters([p], enabled=self.zero3):
                if self.rank == 0:
                    out.append((name, p.detach().to("cpu", copy=True)))
        return out

    def export_weights(self) -> tuple[dict, list[tuple[str, torch.Tensor]]]:
        """(summary, named_weights()): called with num_returns=2 so the driver can fetch the small
        summary (and any error) while the weights stay in the object store."""
        named = self.named_weights()
        return {"rank": self.rank, **weights_summary(named)}, named

    def open_weight_channel(
        self,
        master_addr: str,
        master_port: int,
        world_size: int,
        backend: str,
        device: str = "cpu",
        timeout_s: float = 600.0,
    ) -> list:
        """Rank 0 joins a BroadcastChannel as its sender (GPU path, learner/weights.py); returns the
        weights metadata receivers need. Other ranks return []."""
        if self.rank != 0:
            return []
        self.channel = BroadcastChannel(
            master_addr=master_addr,
            master_port=master_port,
            rank=0,
            world_size=world_size,
            backend=backend,
            device=device,
            timeout_s=timeout_s,
        )
        # ZeRO-3 keeps the full shape of a partitioned parameter in ds_shape.
        return [
            (n, tuple(getattr(p, "ds_shape", p.shape)), str(p.dtype).removeprefix("torch."))
            for n, p in self.engine.module.named_parameters()
        ]

    def send_weights(self) -> int:
        """Broadcast the weights over the channel (every rank calls it: ZeRO-3 gathers); returns count."""
        named = self.named_weights()
        return self.channel.send(named) if self.rank == 0 else 0

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
