"""How process reward models are judged: pure, torch-free metrics over per-step PRM values.

- `step_auc`: ROC AUC of step scores against step labels (True = a good step), by the Mann-Whitney
  statistic: the chance that a random good step outscores a random bad one, ties counting one half.
- `predicted_first_error` / `first_error_f1`: ProcessBench (Zheng et al. 2412.06559). A PRM "predicts" the
  first step whose value falls below a threshold as the earliest error; it is scored by its accuracy on
  flawed solutions (the exact gold index), on correct ones (nothing flagged) and their harmonic mean.
"""

from __future__ import annotations

import math


def step_auc(scores: list[float], labels: list[bool]) -> float:
    """ROC AUC by the Mann-Whitney U statistic (ties count one half); NaN when only one class is present."""
    if len(scores) != len(labels):
        raise ValueError(f"scores has {len(scores)} entries, labels {len(labels)}")
    n_pos = sum(labels)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    # Average ranks (1-based) over tied runs; U = (sum of positive ranks) - n_pos (n_pos + 1) / 2.
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    rank_sum = 0.0
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        mid_rank = (start + end) / 2 + 1
        rank_sum += mid_rank * sum(labels[order[j]] for j in range(start, end + 1))
        start = end + 1
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def predicted_first_error(values: list[float], threshold: float) -> int | None:
    """Index of the first step whose value is < threshold (ProcessBench, Zheng et al. 2412.06559); None if none."""
    return next((i for i, v in enumerate(values) if v < threshold), None)


def _harmonic(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return math.nan
    return 0.0 if a == 0 or b == 0 else 2 * a * b / (a + b)


def first_error_f1(
    values_per_solution: list[list[float]], gold_first_error: list[int | None], threshold: float = 0.5
) -> dict[str, float]:
    """ProcessBench's score (Zheng et al. 2412.06559) of a PRM's earliest-error predictions.

    - acc_flawed: on solutions with a gold error, the fraction whose predicted first error is exactly it;
    - acc_correct: on solutions without one (gold None), the fraction where no step is flagged;
    - f1: their harmonic mean, 0.0 when either is 0, NaN when either class is absent (so is its accuracy);
    - n_flawed, n_correct: the class sizes (whole numbers).
    """
    if len(values_per_solution) != len(gold_first_error):
        raise ValueError(
            f"values_per_solution has {len(values_per_solution)} solutions, gold_first_error {len(gold_first_error)}"
        )
    hits_flawed = hits_correct = n_flawed = n_correct = 0
    for i, (values, gold) in enumerate(zip(values_per_solution, gold_first_error, strict=True)):
        if gold is not None and not 0 <= gold < len(values):
            raise ValueError(f"gold_first_error[{i}] = {gold} is not a step of a {len(values)}-step solution")
        predicted = predicted_first_error(values, threshold)
        if gold is None:
            n_correct += 1
            hits_correct += predicted is None
        else:
            n_flawed += 1
            hits_flawed += predicted == gold
    acc_flawed = hits_flawed / n_flawed if n_flawed else math.nan
    acc_correct = hits_correct / n_correct if n_correct else math.nan
    return {
        "acc_flawed": acc_flawed,
        "acc_correct": acc_correct,
        "f1": _harmonic(acc_flawed, acc_correct),
        "n_flawed": n_flawed,
        "n_correct": n_correct,
    }
