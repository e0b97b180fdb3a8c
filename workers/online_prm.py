"""A PRM that keeps learning during RL, from the run's own samples and their outcomes.

A PRM trained once on the base policy's samples is judged on text it has never seen as soon as the policy
moves, and RL moves the policy to exactly the text the PRM over-scores (reward hacking). PRIME (Cui et al.
2502.01456) keeps the PRM on the policy's distribution by updating it online with outcome labels on every
batch of rollouts. We do the same with an explicit PRM: after each batch is scored, every step of every
sample is labelled with that sample's outcome and the PRM takes AdamW steps on binary cross-entropy. A
sample's outcome is a one-rollout Monte-Carlo estimate of the success probability from each of its prefixes
(the quantity mc_soft labels estimate with K rollouts per prefix, Math-Shepherd 2312.08935), so the PRM keeps
its meaning and follows the current policy; text the policy drifts to and that fails is scored low from the
next batch on. Departure from PRIME: PRIME updates its PRM on a batch and then scores that batch; we score each
trajectory as it is generated (overlapped with generation) and learn afterwards, so a sample's step rewards
never come from a PRM that has just been fitted to that sample's own outcome.

Its state (weights and optimizer) is saved with each checkpoint as an HF directory plus the optimizer's
tensors, so a resumed run and a Ray-restarted reward actor continue from it; optimizer state is read with
`weights_only=True` (tensors, no code).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import torch

from algo.prm_metrics import step_auc
from tasks.prm_formats import Item, PRMFormat

OPTIMIZER_FILE = "optimizer.pt"


class OnlinePrm:
    def __init__(self, scorer: PRMFormat, *, lr: float, batch_size: int):
        if not lr > 0:
            raise ValueError(f"online PRM: lr must be > 0, got {lr}")
        if batch_size < 1:
            raise ValueError(f"online PRM: batch_size must be >= 1, got {batch_size}")
        self.scorer, self.batch_size = scorer, batch_size
        scorer.model.requires_grad_(True)  # eval mode stays: scoring and fitting see the same function
        self.optimizer = torch.optim.AdamW(scorer.model.parameters(), lr=lr, weight_decay=0.0)
        self.updates = 0

    def learn(self, items: list[Item], labels: list[list[float]]) -> dict[str, float]:
        """Mini-batches of `batch_size` items in the given order, one optimizer step each. The loss of each
        mini-batch is taken before its own step, so its mean measures how well the PRM predicted samples it
        had not learned from yet."""
        if len(items) != len(labels):
            raise ValueError(f"online PRM: {len(items)} items but {len(labels)} label lists")
        losses, last = [], []  # last: each item's score at its final step, before the PRM learned from it
        for i in range(0, len(items), self.batch_size):
            loss, probs = self.fit(items[i : i + self.batch_size], labels[i : i + self.batch_size])
            losses.append(loss)
            last += [p[-1] for p in probs]
        self.updates += len(losses)
        steps = sum(len(lab) for lab in labels)
        nan = float("nan")
        return {
            "prm_online/loss": sum(losses) / len(losses) if losses else nan,
            # Does the PRM still tell samples apart? AUC of its final-step score against the outcome (NaN with
            # one class), and the spread of those scores (0: the PRM has become a constant).
            "prm_online/auc": step_auc(last, [lab[-1] >= 0.5 for lab in labels]) if last else nan,
            "prm_online/score_std": statistics.pstdev(last) if last else nan,
            "prm_online/label_mean": sum(sum(lab) for lab in labels) / steps if steps else nan,
            "prm_online/samples": float(len(items)),
            "prm_online/updates": float(self.updates),
        }

    def fit(self, items: list[Item], labels: list[list[float]]) -> tuple[float, list[list[float]]]:
        """One optimizer step on binary cross-entropy between the step probabilities of `items` (one padded
        forward) and `labels` (one target in [0, 1] per step); returns the loss and each item's step
        probabilities, both from before the step. Every layout's forward is differentiable, so a PRM of any
        format can learn this way."""
        built = [self.scorer.input_ids(q, steps) for q, steps in items]
        probs = self.scorer.probabilities([ids for ids, _ in built])
        rows = torch.tensor([b for b, (_, pos) in enumerate(built) for _ in pos], device=probs.device)
        cols = torch.tensor([p for _, pos in built for p in pos], device=probs.device)
        target = torch.tensor([y for lab in labels for y in lab], dtype=torch.float32, device=probs.device)
        if target.numel() != rows.numel():
            raise ValueError(f"online PRM: {target.numel()} labels for {rows.numel()} steps")
        eps = 1e-6  # every layout gives probabilities, not logits: keep log() finite
        scored = probs[rows, cols]
        loss = torch.nn.functional.binary_cross_entropy(scored.clamp(eps, 1 - eps), target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        flat = scored.detach().cpu().tolist()
        per_item, start = [], 0
        for _, pos in built:
            per_item.append(flat[start : start + len(pos)])
            start += len(pos)
        return float(loss.detach()), per_item

    def save(self, out_dir: str) -> str:
        """An HF directory any prm source can load (the adapted PRM), plus the optimizer state."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.scorer.model.save_pretrained(out, safe_serialization=True)
        self.scorer.tokenizer.save_pretrained(out)
        torch.save({"state": self.optimizer.state_dict(), "updates": self.updates}, out / OPTIMIZER_FILE)
        return str(out)

    def load(self, in_dir: str) -> None:
        from safetensors.torch import load_file

        root = Path(in_dir)
        shards = sorted(root.glob("*.safetensors"))
        if not shards:
            raise FileNotFoundError(f"online PRM: no *.safetensors weights in {in_dir}")
        weights: dict[str, Any] = {}
        for shard in shards:
            weights.update(load_file(str(shard), device=str(next(self.scorer.model.parameters()).device)))
        try:
            missing, unexpected = self.scorer.model.load_state_dict(weights, strict=False)
        except RuntimeError as e:  # a tensor of another shape
            raise ValueError(f"online PRM: {in_dir} does not match the model: {e}") from e
        # Tied weights may be saved once; anything else missing or extra is a different model.
        tied = set(getattr(self.scorer.model, "_tied_weights_keys", None) or [])
        if unexpected or set(missing) - tied:
            raise ValueError(f"online PRM: {in_dir} does not match the model (missing {missing}, extra {unexpected})")
        saved = torch.load(root / OPTIMIZER_FILE, weights_only=True)
        self.optimizer.load_state_dict(saved["state"])
        self.updates = int(saved["updates"])
