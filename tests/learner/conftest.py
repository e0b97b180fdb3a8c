"""Fixtures of the learner tests: a tiny random Qwen2 policy dir, synthetic padded batches, local Ray."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")


def make_policy_dir(path) -> str:
    """Qwen2, hidden 64, 2 layers, 2 heads (head size 32), byte-level BPE vocab of 258, random init."""
    from tasks.models import make_tiny_policy
    from tasks.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer(["1+5-8+4=", "1+5=6 -8+4\n", "6-8=8 +4\n", "8+4=2\n", "A2"], vocab_size=258)
    make_tiny_policy(path, tok, hidden=64, layers=2, heads=2, kv_heads=1, intermediate=128, seed=0)
    return str(path)


def make_batch(B: int, *, prompt_len: int = 8, max_response: int = 40, step_len: int = 8, vocab: int = 258,
               seed: int = 0) -> dict:
    """A right-padded batch in algo.batch.collate's layout with random tokens and advantages.

    Row b has a response of max_response - (b % 3) * 4 tokens cut into steps of step_len tokens.
    """
    g = torch.Generator().manual_seed(seed)
    L = prompt_len + max_response
    batch = {
        "input_ids": torch.full((B, L), 1, dtype=torch.long),  # 1 = pad id of the tiny tokenizer
        "attention_mask": torch.zeros(B, L, dtype=torch.long),
        "response_mask": torch.zeros(B, L),
        "step_index": torch.full((B, L), -1, dtype=torch.long),
        "behavior_logprobs": torch.zeros(B, L),
        "advantages": torch.zeros(B, L),
        "returns": torch.zeros(B, L),
        "sample_valid": torch.ones(B),
    }
    for b in range(B):
        n = max_response - (b % 3) * 4
        batch["input_ids"][b, : prompt_len + n] = torch.randint(2, vocab, (prompt_len + n,), generator=g)
        batch["attention_mask"][b, : prompt_len + n] = 1
        batch["response_mask"][b, prompt_len : prompt_len + n] = 1.0
        batch["step_index"][b, prompt_len : prompt_len + n] = torch.arange(n) // step_len
        batch["behavior_logprobs"][b, prompt_len : prompt_len + n] = -5.5 + 0.1 * torch.randn(n, generator=g)
        adv = torch.randn(n // step_len + 1, generator=g)[torch.arange(n) // step_len]  # one value per step
        batch["advantages"][b, prompt_len : prompt_len + n] = adv
        batch["returns"][b, prompt_len : prompt_len + n] = adv
    return batch


@pytest.fixture(scope="session")
def policy_dir(tmp_path_factory) -> str:
    return make_policy_dir(tmp_path_factory.mktemp("tiny_policy"))


@pytest.fixture(scope="module")   # module scope: other test folders start their own Ray
def ray_local():
    import ray

    if not ray.is_initialized():
        # Test-defined actors (pickled by reference) must be importable in Ray workers.
        here = os.path.dirname(os.path.abspath(__file__))
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": here}})
    yield ray
    ray.shutdown()


def rank_kwargs(policy_dir: str, **over) -> dict:
    """LearnerRank arguments for the tests (plain PPO, token aggregation, no KL/entropy/SFT)."""
    kw = dict(model_dir=policy_dir, backend="gloo", zero_stage=2, micro_batch_size=4, lr=1e-3,
              weight_decay=0.0, warmup_steps=0, total_steps=100, schedule="constant", grad_clip=1.0,
              ppo_epochs=1, mini_batches=1, clip_low=0.2, clip_high=0.2, dual_clip=None, loss_agg="token",
              entropy_coef=0.0, kl_coef=0.0, kl_estimator="k3", sft_coef=0.0, seed=0, threads=1, timeout_s=300.0)
    kw.update(over)
    return kw
