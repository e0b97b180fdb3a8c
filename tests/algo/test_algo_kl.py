"""KL estimators: hand numbers, and exact expectations over a small distribution."""

import math

import pytest
import torch

from algo.kl import kl_estimate, kl_in_reward


def test_hand_numbers():
    # pi(x) = .5, ref(x) = .25: log r = log(.25/.5) = -0.693147
    # k1 = 0.693147; k2 = 0.693147^2 / 2 = 0.240227; k3 = .5 - 1 + 0.693147 = 0.193147
    lp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    assert kl_estimate(lp, ref, "k1").item() == pytest.approx(0.693147, abs=1e-6)
    assert kl_estimate(lp, ref, "k2").item() == pytest.approx(0.240227, abs=1e-6)
    assert kl_estimate(lp, ref, "k3").item() == pytest.approx(0.193147, abs=1e-6)


def test_k1_k3_are_unbiased_exactly():
    # E_{x~pi}[k] over the whole support equals KL(pi || ref) for k1 and k3
    pi = torch.tensor([0.5, 0.3, 0.2])
    ref = torch.tensor([0.2, 0.2, 0.6])
    kl = float((pi * (pi.log() - ref.log())).sum())
    for kind in ("k1", "k3"):
        est = kl_estimate(pi.log()[None], ref.log()[None], kind)[0]
        assert float((pi * est).sum()) == pytest.approx(kl, abs=1e-6)
    assert (kl_estimate(pi.log()[None], ref.log()[None], "k3") >= 0).all()


def test_mask_clamp_errors_and_reward():
    lp = torch.tensor([[0.0, -50.0]])
    ref = torch.tensor([[0.0, 0.0]])
    out = kl_estimate(lp, ref, "k3", mask=torch.tensor([[1.0, 0.0]]))
    assert out.tolist() == [[0.0, 0.0]]
    assert torch.isfinite(kl_estimate(lp, ref, "k3")).all()  # log r = 50 clamped to 20
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'; valid: k1, k2, k3"):
        kl_estimate(lp, ref, "k4")
    with pytest.raises(ValueError, match="differ"):
        kl_estimate(lp, ref[:, :1], "k1")
    torch.testing.assert_close(kl_in_reward(torch.tensor([0.5, 2.0]), 0.1), torch.tensor([-0.05, -0.2]))
