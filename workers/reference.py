"""Reference policy: a frozen copy of the initial policy for the KL term (pi || pi_ref).

As in InstructGPT (Ouyang et al. 2203.02155) and GRPO (DeepSeekMath 2402.03300): the reference is the
policy RL starts from, never updated. Plain torch in eval mode without gradients; log-probs use the
convention of algo.batch.shift_logprobs (position t is log p(input_ids[t] | < t), 0 at t = 0), so they
line up with the learner's and the behaviour log-probs.
"""

from __future__ import annotations

import torch

from algo.batch import shift_logprobs
from engine.batching import batch_size, check_rows, forward_logits, micro_slices, to_device, trajectory_row
from engine.process import prepare_process, role_device, role_dtype


class ReferenceWorker:
    def __init__(
        self,
        *,
        model_dir: str,
        micro_batch_size: int = 16,
        dtype: str = "float32",
        threads: int = 1,
        deterministic: bool = False,
        trust_remote_code: bool = False,
        log_file: str | None = None,
        device: str | None = None,
    ):
        """dtype: model.dtype (the policy's); device: None = the GPU Ray gave this actor, else the CPU."""
        from transformers import AutoModelForCausalLM

        prepare_process(threads, log_file=log_file, deterministic=deterministic)
        self.device = role_device(device)
        self.model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=role_dtype(dtype, self.device), trust_remote_code=trust_remote_code
        ).eval()
        self.model.requires_grad_(False)
        self.model.to(self.device)
        self.micro_batch_size = micro_batch_size

    @torch.no_grad()
    def logprobs(self, batch: dict) -> torch.Tensor:
        """[B, L] float32 reference log-probs of batch['input_ids'] (0 at position 0)."""
        check_rows(batch)
        for key in ("input_ids", "attention_mask"):
            if key not in batch:
                raise KeyError(f"reference batch is missing {key!r} (has {sorted(batch)})")
        batch = to_device({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, self.device)
        out = []
        for s in micro_slices(batch_size(batch), self.micro_batch_size):
            ids, att = batch["input_ids"][s], batch["attention_mask"][s]
            out.append(shift_logprobs(forward_logits(self.model, ids, att), ids))
        return torch.cat(out).cpu()  # leaves the actor: Ray carries CPU tensors

    def traj_logprobs(self, traj) -> list[float]:
        """Reference log-prob of each response token of one Trajectory (streamed per sample)."""
        batch, response = trajectory_row(traj)
        return self.logprobs(batch)[0, response].tolist()
