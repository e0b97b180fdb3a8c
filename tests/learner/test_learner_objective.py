"""Pure tests of the learner's objective (no DeepSpeed, no Ray). Its exact normalisation over micro-batches
is tested through engine.batching.accumulated_step in tests/engine/test_engine_batching.py."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import coefs

from learner.objective import GUIDED_PEAK, GUIDED_SUMS, check_policy_batch, micro_objective, units

LN2 = math.log(2.0)


def hand_batch() -> dict:
    """One row: 1 prompt token, 3 response tokens in steps [0, 0, 1] with advantages [1, 1, 4]."""
    return {
        "input_ids": torch.tensor([[0, 1, 0, 1]]),
        "attention_mask": torch.ones(1, 4, dtype=torch.long),
        "response_mask": torch.tensor([[0.0, 1.0, 1.0, 1.0]]),
        "step_index": torch.tensor([[-1, 0, 0, 1]]),
        "behavior_logprobs": torch.zeros(1, 4),
        "advantages": torch.tensor([[0.0, 1.0, 1.0, 4.0]]),
        "sample_valid": torch.ones(1),
        "ref_logprobs": torch.full((1, 4), math.log(0.25)),
        "sft_mask": torch.tensor([[0.0, 1.0, 1.0, 1.0]]),
    }


@pytest.mark.parametrize("agg, expected_policy", [("token", -2.0), ("step", -2.5), ("sequence", -2.0)])
def test_micro_objective_by_hand(agg, expected_policy):
    # Uniform logits over V=2: every log-prob is ln 0.5, every entropy ln 2; old = new so ratio = 1.
    # policy: token  -(1 + 1 + 4) / 3 = -2;  step  mean(-(1+1)/2, -4) = -2.5;  sequence  -2.
    # KL k1 = logprob - ref = ln 0.5 - ln 0.25 = ln 2 per token; SFT NLL = -ln 0.5 = ln 2.
    # loss = policy + 0.1 ln2 - 0.01 ln2 + 0.5 ln2 = policy + 0.59 ln2.
    batch = hand_batch()
    logits = torch.zeros(1, 4, 2)
    old = torch.tensor([[0.0, math.log(0.5), math.log(0.5), math.log(0.5)]])
    c = coefs(loss_agg=agg, kl_coef=0.1, kl_estimator="k1", entropy_coef=0.01, sft_coef=0.5)
    loss, m = micro_objective(logits, batch, old, (1.0, 1.0, 1.0), c)
    assert m["policy_loss"] == pytest.approx(expected_policy)
    assert m["entropy"] == pytest.approx(LN2)
    assert m["kl"] == pytest.approx(LN2)
    assert m["sft_nll"] == pytest.approx(LN2)
    assert float(loss) == pytest.approx(expected_policy + 0.59 * LN2)
    assert m["clip_frac"] == 0.0 and m["approx_kl"] == pytest.approx(0.0)


def test_units_by_hand():
    # (policy aggregation units, SFT tokens, response tokens) of the hand batch: 3 tokens in 2 steps, 1 sequence
    batch = hand_batch()
    for agg, policy_units in (("token", 3.0), ("step", 2.0), ("sequence", 1.0)):
        assert units(batch, coefs(loss_agg=agg)).tolist() == [policy_units, 3.0, 3.0]
    batch["sample_valid"] = torch.zeros(1)  # a masked sample counts nowhere
    assert units(batch, coefs()).tolist() == [0.0, 0.0, 0.0]


def test_check_policy_batch_names_the_missing_key():
    with pytest.raises(KeyError, match="advantages"):
        check_policy_batch({k: v for k, v in hand_batch().items() if k != "advantages"}, coefs())
    with pytest.raises(KeyError, match="ref_logprobs"):
        check_policy_batch({k: v for k, v in hand_batch().items() if k != "ref_logprobs"}, coefs(kl_coef=0.1))


def test_guided_row_and_its_weight_sums_by_hand():
    # The hand batch as a gold sample (guided 1.0), max_weight 2. Every new log-prob is ln 0.5 (uniform logits over
    # V=2); the old ones make the ratios 3, 0.5 and 1 -> weights min(r, 2) = 2, 0.5, 1 on advantages 1, 1, 4:
    # policy (token) = -(2 * 1 + 0.5 * 1 + 1 * 4) / 3 = -6.5 / 3, unclipped (PPO would clip the first two tokens).
    # Sums over the gold tokens: w 3.5, w^2 4 + 0.25 + 1 = 5.25, 3 tokens, peak 2 (plain sums, not shares).
    batch = {**hand_batch(), "guided": torch.ones(1)}
    logits = torch.zeros(1, 4, 2)
    half = math.log(0.5)
    old = torch.tensor([[0.0, half - math.log(3.0), half - math.log(0.5), half]])
    c = coefs(guided_max_weight=2.0)
    check_policy_batch(batch, c)
    loss, m = micro_objective(logits, batch, old, (1.0, 1.0, 1.0), c)
    assert m["policy_loss"] == pytest.approx(-6.5 / 3) and m["clip_frac"] == 0.0
    assert [m[k] for k in (*GUIDED_SUMS, GUIDED_PEAK)] == pytest.approx([3.5, 5.25, 3.0, 2.0])
    batch["guided"] = torch.zeros(1)  # not a gold sample: plain PPO, no gold token to sum
    _, m = micro_objective(logits, batch, old, (1.0, 1.0, 1.0), c)
    _, plain = micro_objective(logits, batch, old, (1.0, 1.0, 1.0), coefs())
    assert m["policy_loss"] == plain["policy_loss"] and m["guided/tokens"] == 0.0
    with pytest.raises(KeyError, match="guided"):
        check_policy_batch(hand_batch(), c)
    with pytest.raises(ValueError, match="max_weight"):  # a gold sample while algo.guided is off is a bug
        micro_objective(logits, {**hand_batch(), "guided": torch.ones(1)}, old, (1.0, 1.0, 1.0), coefs())
