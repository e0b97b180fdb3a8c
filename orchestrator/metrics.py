"""Run metrics: one JSON object per step in metrics.jsonl, TensorBoard events, and a PNG of the curves.

Rollout statistics are computed here from trajectories: reward statistics overall and per step position
(position k = the k-th reasoning step), oracle step accuracy per position, lengths and truncation. They describe
the policy: gold samples (info["guided"], orchestrator/guided.py), which the policy did not write, are left out.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict

from algo.trajectory import Trajectory
from orchestrator.rundir import jsonable


def _rewards(t: Trajectory) -> tuple[float, list[float]]:
    """(outcome_reward, step_rewards) of a valid trajectory; both are set once the reward worker scored it."""
    if t.outcome_reward is None or t.step_rewards is None:
        raise ValueError(f"trajectory {t.uid} is valid but has no rewards: was it scored by the reward worker?")
    return t.outcome_reward, t.step_rewards


def rollout_stats(trajs: list[Trajectory], max_positions: int = 8) -> dict[str, float | str]:
    trajs = [t for t in trajs if not t.info.get("guided")]  # the policy's own samples (module docstring)
    valid = [t for t in trajs if t.sample_valid]
    out: dict[str, float | str] = {"samples/masked": float(len(trajs) - len(valid))}
    errors = [t.info.get("reward_error", "?") for t in trajs if not t.sample_valid]
    if errors:  # the reason, not only the count: a broken reward source must be visible in the log
        out["reward/first_error"] = errors[0]
    if not valid:
        return out
    n = len(valid)
    rewards = [_rewards(t) for t in valid]
    out["reward/outcome_mean"] = sum(outcome for outcome, _ in rewards) / n
    all_steps = [r for _, steps in rewards for r in steps]
    if all_steps:
        out["reward/step_mean"] = sum(all_steps) / len(all_steps)
        out["reward/step_min_mean"] = sum(min(steps) for _, steps in rewards if steps) / n
    by_pos, correct_by_pos = defaultdict(list), defaultdict(list)
    for t, (_, steps) in zip(valid, rewards, strict=True):
        for k, r in enumerate(steps[:max_positions]):
            by_pos[k].append(r)
        for k, c in enumerate(t.info.get("step_correct", [])[:max_positions]):
            correct_by_pos[k].append(float(c))
    for k, rs in sorted(by_pos.items()):
        out[f"reward/step_{k}"] = sum(rs) / len(rs)
    for k, cs in sorted(correct_by_pos.items()):
        out[f"oracle/step_correct_{k}"] = sum(cs) / len(cs)
    if any("outcome_correct" in t.info for t in valid):
        out["oracle/accuracy"] = sum(bool(t.info.get("outcome_correct")) for t in valid) / n
        flat = [float(c) for t in valid for c in t.info.get("step_correct", [])]
        out["oracle/step_accuracy"] = sum(flat) / max(1, len(flat))
    out["response/len_mean"] = sum(len(t.response_ids) for t in trajs) / len(trajs)
    out["response/steps_mean"] = sum(t.num_steps for t in trajs) / len(trajs)
    out["response/truncated_frac"] = sum(t.finish_reason == "length" for t in trajs) / len(trajs)
    return out


def sample_records(step: int, trajs: list[Trajectory]) -> list[dict]:
    """One row per sample for run_dir/samples.jsonl: who made it (a gold sample: guided, no replica), with which
    weights, what it earned."""
    return [
        {
            "step": step,
            "group_id": t.group_id,
            "sample": t.info.get("sample"),
            "prompt_id": t.prompt_id,
            "uid": t.uid,
            "replica": t.info.get("replica"),
            "policy_version": t.policy_version,
            "sample_valid": t.sample_valid,
            "outcome_reward": t.outcome_reward,
            "step_rewards": t.step_rewards,
            "finish_reason": t.finish_reason,
            "guided": bool(t.info.get("guided", False)),  # a gold solution, not the policy's (algo.guided)
            "response": t.response_text,
        }
        for t in trajs
    ]


class MetricsLog:
    """Appends rows to run_dir/<name> (and TensorBoard); on resume keeps the rows up to the checkpoint."""

    def __init__(
        self, run_dir: str, resume_from_step: int | None = None, name: str = "metrics.jsonl", tensorboard: bool = True
    ):
        self.path = os.path.join(run_dir, name)
        self.rows: list[dict] = []
        if resume_from_step is not None and os.path.exists(self.path):
            with open(self.path) as fh:
                self.rows = [r for r in map(json.loads, fh) if r["step"] <= resume_from_step]
        with open(self.path, "w") as fh:  # drop rows of steps after the checkpoint: they are redone
            fh.writelines(json.dumps(r) + "\n" for r in self.rows)
        self.tb = _tensorboard_writer(run_dir) if tensorboard else None

    def log(self, *rows: dict) -> None:
        records = [jsonable(r) for r in rows]
        self.rows.extend(records)
        with open(self.path, "a") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in records)
        for row in records:
            self._tensorboard(row)

    def _tensorboard(self, row: dict) -> None:
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step" and math.isfinite(v):
                    self.tb.add_scalar(k, v, row["step"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _tensorboard_writer(run_dir: str):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is in the cpu/gpu extras; the JSONL file is the record
        return None
    return SummaryWriter(os.path.join(run_dir, "tensorboard"))


PLOT_KEYS = [
    ("eval/accuracy", "held-out greedy accuracy"),
    ("oracle/accuracy", "sample accuracy (train)"),
    ("oracle/step_accuracy", "sample step accuracy (train)"),
    ("reward/step_mean", "mean step reward"),
    ("kl", "KL to reference (learner)"),
    ("kl/behavior_ref", "KL to reference (samples)"),
    ("entropy", "entropy"),
]


def plot_curves(rows: list[dict], path: str, title: str = "") -> str | None:
    """A grid of learning curves against samples consumed; returns the path (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    keys = [(k, label) for k, label in PLOT_KEYS if any(r.get(k) for r in rows)]  # skip absent / all-zero
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], keys, strict=True):
        pts = [(r.get("samples", r["step"]), r[key]) for r in rows if r.get(key) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if key.startswith("eval") else None)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("samples")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
