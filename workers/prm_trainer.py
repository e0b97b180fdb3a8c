"""PRM trainer: a process reward model learned from step-labelled examples, with DeepSpeed (one rank).

The model is any HF token classifier with one label (a scalar per token), started from a trained PRM, or from
a policy's backbone with a zero head (so every step starts at probability 0.5): the `token_classification`
layout of tasks/prm_formats.py, read at the separator that closes each step. The loss is binary
cross-entropy of sigmoid(score) against the step labels, which may be hard (0/1: oracle, mc_hard, corrupt)
or soft (mc_soft, prover values), averaged over the labelled steps of the batch: the PRM objective of
Math-Shepherd (Wang et al. 2312.08935) and PRM800K (Lightman et al. 2305.20050) with a sigmoid head.

Like the critic, it runs as its own DeepSpeed world of one rank; ZeRO stage 0, as there is nothing to
partition across one rank.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.build import TrainSettings, build_engine, free_port, init_distributed
from engine.process import prepare_process, role_device, seed_everything
from workers.critic import load_value_model

Example = tuple[str, list[str], list[float]]  # question, steps (without delimiter), one label per step


class PrmTrainer:
    def __init__(
        self,
        *,
        base_dir: str,
        train: TrainSettings,
        separator: str,
        backend: str = "gloo",
        seed: int = 0,
        threads: int = 1,
        trust_remote_code: bool = False,
        log_file: str | None = None,
        device: str | None = None,
    ):
        prepare_process(threads, log_file=log_file, deterministic=True)
        seed_everything(seed)
        from transformers import AutoTokenizer

        self.device, self.separator = role_device(device), separator
        self.tokenizer = AutoTokenizer.from_pretrained(base_dir, trust_remote_code=trust_remote_code)
        init_distributed(0, 1, "127.0.0.1", free_port(), backend)
        model = load_value_model(base_dir, None, trust_remote_code)
        self.engine = build_engine(model, train, self.device)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.examples: list[Example] = []

    def set_examples(self, examples: list[Example]) -> int:
        self.examples = [(q, list(s), list(v)) for q, s, v in examples]
        return len(self.examples)

    def train_batches(self, batches: list[list[int]]) -> list[dict]:
        """One optimizer step per batch of example indices; returns loss and lr per step."""
        self.engine.train()
        out = []
        for rows in batches:
            ids, attn, positions, labels = self._collate([self.examples[i] for i in rows])
            logits = self.engine(input_ids=ids, attention_mask=attn).logits[..., 0].float()  # [B, T]
            scored = logits[positions]  # [S]: one score per labelled step
            loss = torch.nn.functional.binary_cross_entropy_with_logits(scored, labels)
            self.engine.backward(loss)
            self.engine.step()
            out.append({"loss": loss.item(), "lr": float(self.engine.get_lr()[0])})
        return out

    def _collate(self, examples: list[Example]):
        """Right-padded ids [B, T], attention mask, the (row, position) of each step's score, the labels [S]."""
        from tasks.prm_formats import prm_input_ids

        built = [prm_input_ids(self.tokenizer, q, steps, self.separator) for q, steps, _ in examples]
        width = max(len(ids) for ids, _ in built)
        ids = torch.full((len(built), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(built), width), dtype=torch.long)
        rows, cols, labels = [], [], []
        for b, ((seq, pos), (_, _, lab)) in enumerate(zip(built, examples, strict=True)):
            ids[b, : len(seq)], attn[b, : len(seq)] = torch.tensor(seq), 1
            rows += [b] * len(pos)
            cols += pos
            labels += lab
        dev = self.engine.device
        positions = (torch.tensor(rows, device=dev), torch.tensor(cols, device=dev))
        return ids.to(dev), attn.to(dev), positions, torch.tensor(labels, dtype=torch.float32, device=dev)

    def save(self, out_dir: str) -> str:
        """An HF directory (model in float32 safetensors + tokenizer) any reward source can load."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model = self.engine.module
        model.config.architectures = [type(model).__name__]
        model.float().save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        return str(out)

    def ping(self) -> str:
        return "prm_trainer"
