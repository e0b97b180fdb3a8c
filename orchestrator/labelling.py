"""Step labels for PRM training: `steprl label CONFIG` writes step-labelled JSONL (tasks/datasets.py format).

Every kind in label.kinds labels the same policy samples (except `corrupt`, which makes its own), so the kinds
can be compared with the oracle on equal ground:

- `oracle` (arithmetic only): the oracle's label.meaning (step_correct | prefix_correct | strict_step);
- `mc_hard` / `mc_soft` (Math-Shepherd, Wang et al. 2312.08935): label.rollouts completions from every step
  prefix; hard = any completion correct, soft = the fraction correct. The two share their rollouts;
- `prover` (PAV, Setlur et al. 2410.08146): the success probability from every prefix of a prover policy that
  is best-of-K of label.prover_policy, 1 - (1 - p)^K with p the Monte-Carlo success rate of that policy.
  Stored as values for the `pav` estimator (a PRM trained on them serves prover values as step rewards);
- `corrupt`: gold solutions, half of them with one inserted subtle error (tasks/corrupt.py); labels are the
  oracle's label.meaning of the result, so the inserted step is wrong and later steps follow the meaning.

Alongside, `heldout.jsonl`: policy samples on eval-split problems with oracle labels, to judge PRMs on.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from algo.prm_metrics import predicted_first_error, step_auc
from algo.search import Node, mc_step_values
from orchestrator.config import LABEL_KINDS
from orchestrator.stepwise import Expander, Judge, text_steps
from tasks.datasets import StepExample


@dataclass
class LabelJob:
    """What the kinds need: the problems, the policy's solutions to them, and how to make more rollouts."""

    problems: list
    questions: list[str]
    solutions: list[Node]
    expander: Expander  # the policy on the generators
    prover_expander: Callable[[], Expander]  # the prover policy's (started on first use)
    judge: Judge
    meaning: str
    rollouts: int
    prover_k: int
    samples_per_problem: int
    delimiter: str
    seed: int
    _mc: list[list[float]] | None = field(default=None, repr=False)
    _mc_cost: dict = field(default_factory=dict, repr=False)

    def mc_values(self) -> tuple[list[list[float]], dict]:
        """Monte-Carlo success rate of the policy from every step prefix (computed once, shared by kinds)."""
        if self._mc is None:
            self._mc, self._mc_cost = _timed_mc(self.solutions, self.rollouts, self.expander, self.judge)
        return self._mc, self._mc_cost


@dataclass
class KindLabels:
    solutions: list[Node]  # what was labelled (corrupt: its own solutions)
    values: list[list[float]]  # one label per step
    cost: dict  # rollouts and seconds spent


def _timed_mc(solutions: list[Node], k: int, expander: Expander, judge: Judge) -> tuple[list[list[float]], dict]:
    t0, before = time.perf_counter(), expander.rollouts
    values = mc_step_values(solutions, k, expander, judge.correct)
    return values, {"rollouts": expander.rollouts - before, "seconds": time.perf_counter() - t0}


def oracle_values(problems: list, solutions: list[Node], meaning: str) -> list[list[float]]:
    """The oracle's labels of `meaning` for every step (steps are the response's lines)."""
    from tasks.oracle import label_response

    out = []
    for node in solutions:
        labels = label_response(problems[node.problem], "".join(node.steps))
        out.append([float(x) for x in getattr(labels, meaning)])
    return out


def _kind_oracle(job: LabelJob) -> KindLabels:
    t0 = time.perf_counter()
    values = oracle_values(job.problems, job.solutions, job.meaning)
    return KindLabels(job.solutions, values, {"rollouts": 0, "seconds": time.perf_counter() - t0})


def _kind_mc_soft(job: LabelJob) -> KindLabels:
    values, cost = job.mc_values()
    return KindLabels(job.solutions, values, cost)


def _kind_mc_hard(job: LabelJob) -> KindLabels:
    values, cost = job.mc_values()
    return KindLabels(job.solutions, [[float(v > 0) for v in row] for row in values], cost)


def _kind_prover(job: LabelJob) -> KindLabels:
    prover = job.prover_expander()
    values, cost = (
        job.mc_values() if prover is job.expander else _timed_mc(job.solutions, job.rollouts, prover, job.judge)
    )
    best_of_k = [[1.0 - (1.0 - p) ** job.prover_k for p in row] for row in values]
    return KindLabels(job.solutions, best_of_k, cost)


def _kind_corrupt(job: LabelJob) -> KindLabels:
    from tasks.arithmetic import solution_text
    from tasks.corrupt import corrupt_solution

    t0, rng = time.perf_counter(), random.Random(job.seed)
    solutions = []
    for i, problem in enumerate(job.problems):
        for s in range(job.samples_per_problem):
            text = corrupt_solution(problem, rng).text if s % 2 == 0 else solution_text(problem)
            solutions.append(Node(i, text_steps(text, job.delimiter), True))
    values = oracle_values(job.problems, solutions, job.meaning)
    return KindLabels(solutions, values, {"rollouts": 0, "seconds": time.perf_counter() - t0})


# label.kinds name -> its labeller, each bound by name (a kind without its _kind_<name> fails at import).
KINDS: dict[str, Callable[[LabelJob], KindLabels]] = {name: globals()[f"_kind_{name}"] for name in LABEL_KINDS}


def step_rows(
    questions: list[str], solutions: list[Node], values: list[list[float]], delimiter: str
) -> list[StepExample]:
    """Rows of the step-labelled JSONL: the question, the steps without their delimiter, the labels (a
    solution without steps has nothing to label)."""
    return [
        StepExample(questions[n.problem], [s.removesuffix(delimiter) for s in n.steps], list(v))
        for n, v in zip(solutions, values, strict=True)
        if n.steps
    ]


def examples(job: LabelJob, labelled: KindLabels) -> list[StepExample]:
    """The rows of one kind's labels."""
    return step_rows(job.questions, labelled.solutions, labelled.values, job.delimiter)


def compare_with_oracle(job: LabelJob, kind: str, labelled: KindLabels, meanings: tuple[str, ...]) -> dict:
    """How a kind's labels agree with the oracle on the same solutions: step AUC against each oracle meaning,
    agreement on the first wrong step (a label below 0.5 against the oracle's first non-step_correct step), and
    cost per labelled step."""
    steps = sum(len(v) for v in labelled.values)
    out = {
        f"label/{kind}/steps": steps,
        f"label/{kind}/rollouts_per_step": labelled.cost["rollouts"] / max(1, steps),
        f"label/{kind}/seconds_per_step": labelled.cost["seconds"] / max(1, steps),
        f"label/{kind}/mean_label": sum(map(sum, labelled.values)) / max(1, steps),
    }
    flat = [v for row in labelled.values for v in row]
    for meaning in meanings:
        truth = oracle_values(job.problems, labelled.solutions, meaning)
        out[f"label/{kind}/auc_{meaning}"] = step_auc(flat, [t > 0.5 for row in truth for t in row])
    truth = oracle_values(job.problems, labelled.solutions, "step_correct")
    agree = [
        predicted_first_error(v, 0.5) == predicted_first_error(t, 0.5)
        for v, t in zip(labelled.values, truth, strict=True)
    ]
    out[f"label/{kind}/first_error_agreement"] = sum(agree) / max(1, len(agree))
    return out
