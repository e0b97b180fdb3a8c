"""RewardWorker: scores every step of a trajectory with named reward sources, combined with weights.

Step sources give a probability per step (oracle step verifier, learned PRM); outcome sources give the
outcome reward (answer checker). Step rewards are the weighted mean of the step sources (so they stay
probabilities for transforms such as log_prob), then the named transform of algo.transforms is applied.
A source that fails is never turned into a number: the trajectory is returned with reward_valid=False and
the error in info["reward_error"], and the driver masks and counts it.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from algo.trajectory import Trajectory
from algo.transforms import apply_reward_transform

# A step source returns one probability per step span; an outcome source returns one number.
StepSource = Callable[[Trajectory, list[str]], list[float]]
OutcomeSource = Callable[[Trajectory, list[str]], float]


class RewardWorker:
    def __init__(self, *, tokenizer_dir: str, sources: list[dict], meaning: str, transform: str,
                 transform_params: dict, task_kind: str, modulus: int = 10, step_delimiter: str = "\n",
                 threads: int = 1):
        torch.set_num_threads(threads)
        from transformers import AutoTokenizer
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.meaning, self.transform, self.transform_params = meaning, transform, dict(transform_params)
        self.task_kind, self.modulus, self.delimiter = task_kind, modulus, step_delimiter
        self.step_sources: list[tuple[str, float, StepSource]] = []
        self.outcome_sources: list[tuple[str, float, OutcomeSource]] = []
        builders = {"oracle": self._oracle_source, "prm": self._prm_source, "outcome": self._outcome_source}
        for src in sources:
            kind, fn = builders[src["name"]](src.get("path"))
            target = self.step_sources if kind == "step" else self.outcome_sources
            target.append((src["name"], float(src.get("weight", 1.0)), fn))

    # ------------------------------------------------------------------------------------------ api --
    def score(self, traj: Trajectory) -> Trajectory:
        t0 = time.time()
        step_texts = [self.tokenizer.decode(traj.response_ids[s:e], skip_special_tokens=True)
                      for s, e in traj.step_spans]
        try:
            traj.info.update(self._oracle_labels(traj, step_texts))
            traj.step_rewards = self._combine_steps(traj, step_texts)
            traj.outcome_reward = sum(w * fn(traj, step_texts) for _, w, fn in self.outcome_sources)
        except Exception as e:  # noqa: BLE001 - any source failure masks the sample, it never becomes a number
            traj.reward_valid = False
            traj.step_rewards = [0.0] * traj.num_steps
            traj.outcome_reward = 0.0
            traj.info["reward_error"] = f"{type(e).__name__}: {e}"
        traj.info["reward_s"] = time.time() - t0
        traj.info["scored_at"] = time.time()
        return traj

    def ping(self) -> str:
        return "reward"

    # --------------------------------------------------------------------------------------- sources --
    def _combine_steps(self, traj: Trajectory, step_texts: list[str]) -> list[float]:
        k = traj.num_steps
        if k == 0 or not self.step_sources:
            return [0.0] * k
        total = torch.zeros(k, dtype=torch.float64)
        weight = sum(w for _, w, _ in self.step_sources)
        for name, w, fn in self.step_sources:
            scores = fn(traj, step_texts)
            if len(scores) != k:
                raise ValueError(f"reward source {name!r} gave {len(scores)} scores for {k} steps")
            total += w * torch.tensor(scores, dtype=torch.float64)
        probs = (total / weight).float().unsqueeze(0)
        out = apply_reward_transform(self.transform, probs, torch.ones_like(probs), **self.transform_params)
        return out.squeeze(0).tolist()

    def _oracle_labels(self, traj: Trajectory, step_texts: list[str]) -> dict:
        """Oracle labels per step span (arithmetic tasks only), kept in info for metrics."""
        if self.task_kind != "arithmetic":
            return {}
        from tasks.arithmetic import problem_from_prompt
        from tasks.oracle import label_response
        labels = label_response(problem_from_prompt(traj.prompt_text, self.modulus), "".join(step_texts))
        lines = span_lines(step_texts, self.delimiter)
        return {"step_correct": [bool(labels.step_correct[i]) if i < labels.num_steps else False for i in lines],
                "prefix_correct": [bool(labels.prefix_correct[i]) if i < labels.num_steps else False
                                   for i in lines],
                "outcome_correct": bool(labels.outcome), "format_ok": bool(labels.format_ok)}

    def _oracle_source(self, path):
        if self.task_kind != "arithmetic":
            raise ValueError("reward source 'oracle' needs task.kind=arithmetic (it checks each operation)")

        def oracle(traj, step_texts):
            return [float(x) for x in traj.info[self.meaning]]
        return "step", oracle

    def _outcome_source(self, path):
        if self.task_kind == "arithmetic":
            return "outcome", lambda traj, step_texts: float(traj.info["outcome_correct"])
        from tasks.datasets import check_answer
        return "outcome", lambda traj, step_texts: float(check_answer(traj.response_text, traj.reference))

    def _prm_source(self, path):
        from transformers import AutoModelForTokenClassification, AutoTokenizer
        from tasks.models import prm_step_scores
        model = AutoModelForTokenClassification.from_pretrained(path).eval()
        tok = AutoTokenizer.from_pretrained(path)

        def prm(traj, step_texts):
            steps = [t[: -len(self.delimiter)] if t.endswith(self.delimiter) else t for t in step_texts]
            with torch.no_grad():
                return list(prm_step_scores(model, tok, traj.prompt_text, steps, self.delimiter))
        return "step", prm


def span_lines(step_texts: list[str], delimiter: str) -> list[int]:
    """Index of the text line (split on the delimiter) each step span starts in.

    Spans and lines agree one to one except where delimiters repeat ("a\\n\\nb"): the segmenter merges an
    extra delimiter into the step before, the line view sees an empty line. Mapping by character offset
    keeps the oracle's labels attached to the span that holds the line's text."""
    out, consumed = [], ""
    for text in step_texts:
        out.append(consumed.count(delimiter))
        consumed += text
    return out
