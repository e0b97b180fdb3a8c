"""Normalisation helpers against hand-computed numbers."""

import torch

from algo.normalize import (
    group_baseline,
    group_normalize,
    leave_one_out_baseline,
    whiten,
)


def test_whiten_hand_example():
    # real entries 1, 2, 3 (the 100 is masked): mean 2, unbiased var (1 + 0 + 1) / 2 = 1
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    torch.testing.assert_close(whiten(x, m, eps=0.0), torch.tensor([[-1.0, 0.0, 1.0, 0.0]]))
    # shift_mean=False keeps the mean: x / std + 0 -> 1, 2, 3 scaled by 1
    torch.testing.assert_close(whiten(x, m, shift_mean=False, eps=0.0), torch.tensor([[1.0, 2.0, 3.0, 0.0]]))


def test_group_baselines():
    r = torch.tensor([1.0, 0.0, 0.5, 7.0])
    g = torch.tensor([3, 3, 3, 9])
    # group 3 mean = 0.5; group 9 alone = 7
    torch.testing.assert_close(group_baseline(r, g), torch.tensor([0.5, 0.5, 0.5, 7.0]))
    # leave one out: (0+.5)/2 = .25, (1+.5)/2 = .75, (1+0)/2 = .5; alone -> own reward
    torch.testing.assert_close(leave_one_out_baseline(r, g), torch.tensor([0.25, 0.75, 0.5, 7.0]))


def test_weight_zero_takes_no_part():
    r = torch.tensor([1.0, 0.0, float("nan")])
    g = torch.tensor([0, 0, 0])
    w = torch.tensor([1.0, 1.0, 0.0])
    torch.testing.assert_close(group_baseline(r, g, w)[:2], torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(leave_one_out_baseline(r, g, w)[:2], torch.tensor([0.0, 1.0]))
    # mean .5, unbiased std sqrt(.5) = .707107 -> +-.707107; the uncounted element -> 0
    out = group_normalize(r, g, w, eps=0.0)
    torch.testing.assert_close(out, torch.tensor([0.707107, -0.707107, 0.0]))


def test_group_normalize_dr_grpo_and_singletons():
    r = torch.tensor([1.0, 0.0, 5.0])
    g = torch.tensor([0, 0, 1])
    torch.testing.assert_close(group_normalize(r, g, std_normalize=False), torch.tensor([0.5, -0.5, 0.0]))
    assert group_normalize(r, g)[2].item() == 0.0  # alone: x - mean = 0
