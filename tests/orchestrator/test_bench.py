"""orchestrator.bench's arithmetic (rates, shares, FLOPs) by hand, and its argument errors; no Ray."""

import pytest

from orchestrator.bench import mode_summary, parse_modes, summarise
from orchestrator.validate import ConfigError


def step(scale: float) -> dict:
    return {
        "timing/step_s": 1.0 * scale,
        "timing/generate_s": 0.5 * scale,
        "timing/wait_s": 0.5 * scale,
        "timing/train_s": 0.4 * scale,
        "timing/sync_s": 0.05 * scale,
        "samples": 128,
        "response_tokens": 300 * scale,
        "sequence_tokens": 1000 * scale,
        "padded_tokens": 4000,
    }


def test_mode_summary_by_hand():
    # Two steps of 1 s and 2 s: wall 3 s. 256 samples / 3 s = 85.33/s; 900 response tokens / 3 s = 300/s.
    # Shares: generate 1.5 / 3 = 0.5, train 1.2 / 3 = 0.4, wait 0.5, sync 0.15 / 3 = 0.05; the driver has
    # the rest of the learner's path: 1 - 0.5 - 0.4 - 0.05 = 0.05. In-loop generator: 900 / 1.5 s = 600 tok/s.
    # Learner: (2 + 6 x 1 epoch) x 1e6 parameters x 3000 real tokens / 1.2 s = 20 GFLOP/s; padding 1 - 3000 / 8000.
    m = mode_summary([step(1), step(2)], max_staleness=1, params=1_000_000, ppo_epochs=1)
    assert m["samples_per_s"] == pytest.approx(256 / 3)
    assert m["tokens_per_s"] == pytest.approx(300)
    assert m["step_s"] == pytest.approx(1.5)
    shares = {k: m[f"share/{k}"] for k in ("generate", "train", "wait", "sync", "driver", "reward")}
    assert shares == pytest.approx(
        {"generate": 0.5, "train": 0.4, "wait": 0.5, "sync": 0.05, "driver": 0.05, "reward": 0}
    )
    assert m["generator/in_loop_tok_s"] == pytest.approx(600)
    assert m["learner/gflops"] == pytest.approx(20.0)
    assert m["learner/padding"] == pytest.approx(0.625)
    assert m["median"]["timing/step_s"] == pytest.approx(1.5) and m["max_staleness"] == 1


def test_summary_keys_compare_the_modes_and_the_standalone_engine():
    result = {"generator/standalone_tok_s": 1200.0, "modes": {}}
    result["modes"]["sync"] = mode_summary([step(1), step(1)], 0, 1_000_000, 1)
    result["modes"]["async"] = {
        **result["modes"]["sync"],
        "samples_per_s": 1.5 * result["modes"]["sync"]["samples_per_s"],
    }
    summarise(result)
    assert result["async_speedup"] == pytest.approx(1.5)
    assert result["generator/in_loop_tok_s"] == pytest.approx(600)  # the sync mode's: generation alone
    assert result["generator/in_loop_share_of_standalone"] == pytest.approx(0.5)


def test_modes_and_steps_are_checked():
    assert parse_modes("sync, async", 3) == ["sync", "async"]
    with pytest.raises(ConfigError, match="--modes 'sync,fast'"):
        parse_modes("sync,fast", 3)
    with pytest.raises(ConfigError, match="train.steps=1"):
        parse_modes("sync", 1)
