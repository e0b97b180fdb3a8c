"""Helpers of the advantage-estimator tests: batches built from step lengths, and reading real tokens."""

import random

import pytest
import torch

from algo import registry
from algo.advantages import AdvantageInputs
from orchestrator.config import AlgoConfig

# The estimators' keyword parameters have no defaults (the config schema holds them): the invariance tests
# run every estimator with the config defaults; the worked examples spell out every parameter.
CONFIG_DEFAULTS = vars(AlgoConfig())


def config_params(name):
    return {k: CONFIG_DEFAULTS[k] for k in registry.ESTIMATORS[name].params}


def build(step_lens, step_rewards, outcome, group_ids, values=None, token_rewards=None, prompt=0, pad=0):
    """Inputs from per-sample step lengths; values / token_rewards are per real token lists."""
    B = len(step_lens)
    n = [sum(lens) for lens in step_lens]
    T, K = prompt + max(n) + pad, max(len(lens) for lens in step_lens)
    mask, sidx = torch.zeros(B, T), torch.full((B, T), -1, dtype=torch.long)
    vals, trew = torch.zeros(B, T), torch.zeros(B, T)
    srew, smask = torch.zeros(B, K), torch.zeros(B, K)
    for b, lens in enumerate(step_lens):
        t = prompt
        for k, length in enumerate(lens):
            mask[b, t : t + length] = 1.0
            sidx[b, t : t + length] = k
            t += length
        smask[b, : len(lens)] = 1.0
        srew[b, : len(lens)] = torch.tensor(step_rewards[b], dtype=torch.float32)
        if values is not None:
            vals[b, prompt : prompt + n[b]] = torch.tensor(values[b], dtype=torch.float32)
        if token_rewards is not None:
            trew[b, prompt : prompt + n[b]] = torch.tensor(token_rewards[b], dtype=torch.float32)
    return AdvantageInputs(
        mask=mask,
        step_index=sidx,
        step_rewards=srew,
        step_mask=smask,
        outcome=torch.tensor(outcome, dtype=torch.float32),
        group_ids=torch.tensor(group_ids),
        values=vals if values is not None else None,
        token_rewards=trew if token_rewards is not None else None,
    )


def real(x, mask):
    """Per-row lists of the values at real tokens."""
    rows = zip(x, mask, strict=True)
    return [[round(float(v), 5) for v, m in zip(row, mrow, strict=True) if m > 0] for row, mrow in rows]


def assert_rows(x, mask, expected, tol=1e-4):
    got = real(x, mask)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g == pytest.approx(e, abs=tol), (got, expected)


def random_inputs(seed, B=6, group=3):
    rng = random.Random(seed)
    steps = [[rng.randint(1, 3) for _ in range(rng.randint(1, 4))] for _ in range(B)]
    srew = [[round(rng.random(), 3) for _ in s] for s in steps]
    n = [sum(s) for s in steps]
    return build(
        steps,
        srew,
        [float(rng.random() < 0.5) for _ in range(B)],
        [b // group for b in range(B)],
        values=[[rng.uniform(-1, 1) for _ in range(k)] for k in n],
        token_rewards=[[rng.uniform(-0.1, 0.0) for _ in range(k)] for k in n],
    )
