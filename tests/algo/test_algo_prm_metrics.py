"""PRM metrics: step AUC and ProcessBench's first-error F1, worked by hand, with invariances."""

import math
import random

import pytest

from algo.prm_metrics import first_error_f1, predicted_first_error, step_auc


def auc_by_pairs(scores, labels):
    """The definition: over (good, bad) pairs, 1 when the good step scores higher, 1/2 on a tie."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def test_step_auc_worked():
    # good .6, .9 vs bad .4: both pairs won -> 1
    assert step_auc([0.9, 0.4, 0.6], [True, False, True]) == 1.0
    # good .5, .9 vs bad .2, .5: (.5,.2) 1, (.5,.5) 1/2, (.9,.2) 1, (.9,.5) 1 -> 3.5 / 4
    assert step_auc([0.2, 0.5, 0.5, 0.9], [False, True, False, True]) == 0.875
    # reversed: good .1 vs bad .3, .2 -> 0 of 2
    assert step_auc([0.1, 0.3, 0.2], [True, False, False]) == 0.0
    # all tied: every pair counts a half
    assert step_auc([0.7] * 4, [True, False, True, False]) == 0.5


def test_step_auc_one_class_is_nan_and_lengths_checked():
    assert math.isnan(step_auc([0.1, 0.2], [True, True]))
    assert math.isnan(step_auc([0.1], [False]))
    assert math.isnan(step_auc([], []))
    with pytest.raises(ValueError, match="labels"):
        step_auc([0.1, 0.2], [True])


def test_step_auc_matches_pairs_and_ignores_monotone_transforms():
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(2, 30)
        scores = [rng.choice([0.1, 0.25, 0.5, 0.75, 0.9, rng.random()]) for _ in range(n)]  # with ties
        labels = [rng.random() < 0.5 for _ in range(n)]
        labels[0], labels[1] = True, False
        auc = step_auc(scores, labels)
        assert auc == pytest.approx(auc_by_pairs(scores, labels))
        # AUC reads only the order of the scores
        assert step_auc([math.log(s) * 3 - 1 for s in scores], labels) == pytest.approx(auc)
        # flipping the labels flips the AUC
        assert step_auc(scores, [not y for y in labels]) == pytest.approx(1 - auc)
        # the order of the steps does not matter
        order = list(range(n))
        rng.shuffle(order)
        assert step_auc([scores[i] for i in order], [labels[i] for i in order]) == pytest.approx(auc)


def test_predicted_first_error():
    assert predicted_first_error([0.9, 0.4, 0.3], 0.5) == 1
    assert predicted_first_error([0.9, 0.5, 0.8], 0.5) is None  # == threshold is not an error
    assert predicted_first_error([0.9, 0.5, 0.8], 0.51) == 1
    assert predicted_first_error([], 0.5) is None


def test_first_error_f1_worked():
    values = [[0.9, 0.3, 0.2], [0.8, 0.2], [0.9, 0.9], [0.6, 0.4], [0.7]]
    gold = [1, 0, None, None, None]
    # flawed: predicted 1 == gold 1 (hit); predicted 1 != gold 0 (miss) -> 1/2
    # correct: nothing flagged (hit); step 1 flagged (miss); nothing flagged (hit) -> 2/3
    # f1 = 2 * 1/2 * 2/3 / (1/2 + 2/3) = (2/3) / (7/6) = 4/7
    got = first_error_f1(values, gold)
    assert got["acc_flawed"] == 0.5
    assert got["acc_correct"] == pytest.approx(2 / 3)
    assert got["f1"] == pytest.approx(4 / 7)
    assert (got["n_flawed"], got["n_correct"]) == (2, 3)
    # threshold .25: flawed: [.9,.3,.2] -> 2 (miss), [.8,.2] -> 1 (miss): 0; correct: all hit -> f1 0
    got = first_error_f1(values, gold, threshold=0.25)
    assert (got["acc_flawed"], got["acc_correct"], got["f1"]) == (0.0, 1.0, 0.0)


def test_first_error_f1_missing_class_and_errors():
    got = first_error_f1([[0.9, 0.9]], [None])
    assert got["acc_correct"] == 1.0 and math.isnan(got["acc_flawed"]) and math.isnan(got["f1"])
    assert got["n_flawed"] == 0
    got = first_error_f1([[0.2]], [0])
    assert got["acc_flawed"] == 1.0 and math.isnan(got["acc_correct"]) and math.isnan(got["f1"])
    with pytest.raises(ValueError, match="gold_first_error"):
        first_error_f1([[0.2]], [0, None])
    with pytest.raises(ValueError, match=r"gold_first_error\[0\] = 2"):
        first_error_f1([[0.2, 0.3]], [2])
