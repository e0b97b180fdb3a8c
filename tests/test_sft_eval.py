"""SFT and evaluation: metric numbers worked by hand with a fake generator, plus a tiny real run."""

import json
import math
from math import comb

import pytest
import torch
from rich.console import Console

from algo.schedules import lr_factor
from orchestrator.evaluate import evaluate_policy, pass_at_k, print_eval_table
from orchestrator.sft import collate_sft, run_sft
from tasks.arithmetic import ArithmeticTask, problem_from_prompt, prompt_text, solution_text
from tasks.datasets import TextProblem


def test_pass_at_k_by_hand():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # k=1 is the sample accuracy c/n
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # 1 - C(7,5)/C(10,5)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 4, 1) == 1.0
    assert pass_at_k(6, 1, 6) == 1.0  # k = n: any correct sample counts
    with pytest.raises(ValueError, match="k=5"):
        pass_at_k(4, 1, 5)


def test_collate_masks_everything_but_response_targets():
    # prompt [7, 8], response [9, 0(eos)]: inputs 7 8 9 0, targets (shifted) 8 9 0 -> mask 0 1 1.
    ids, attn, mask = collate_sft([([7, 8], [9, 0]), ([5], [0])], pad_id=1)
    assert ids.tolist() == [[7, 8, 9, 0], [5, 0, 1, 1]]
    assert attn.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert mask.tolist() == [[0, 1, 1], [1, 0, 0]]


def test_lr_warmup_then_constant():
    # SFT's lr at batch b: lr * lr_factor(b) with the "constant" schedule (linear warm-up, then constant)
    def sft_lr(b, lr, warmup, batches=11):
        return lr * lr_factor(b, warmup_steps=warmup, total_steps=batches, schedule="constant")

    assert [sft_lr(b, 1.0, 4) for b in (0, 1, 3, 10)] == [0.25, 0.5, 1.0, 1.0]
    assert sft_lr(0, 0.1, 0) == 0.1


def _fake_generator(answers):
    """generate_fn returning canned texts: greedy -> answers[prompt][0], sampling -> answers[prompt][1]."""

    def generate(prompts, n, temperature):
        return [[answers[p][0]] * n if temperature == 0 else answers[p][1][:n] for p in prompts]

    return generate


def test_evaluate_numbers_by_hand():
    a, b = problem_from_prompt("1+5-8+4="), problem_from_prompt("2+3=")  # answers 2 and 5
    good_a, good_b = solution_text(a), solution_text(b)
    slip_a = "1+5=7 -8+4\n7-8=9 +4\n9+4=3\nA3\n"  # steps F T T T
    answers = {
        prompt_text(a): (slip_a, [good_a, slip_a, slip_a, slip_a]),  # c = 1 of 4
        prompt_text(b): (good_b, [good_b, good_b, "x\n", "A5"]),  # c = 2 of 4
    }
    m = evaluate_policy(None, [a, b], k=2, n_samples=4, generate_fn=_fake_generator(answers))
    assert m["eval/accuracy"] == 0.5  # b right, a wrong
    assert m["eval/step_accuracy"] == pytest.approx(5 / 6)  # a: 3 of 4 steps, b: 2 of 2
    assert m["eval/first_error_hist"] == {"1": 1, "none": 1}
    # pass@2: a: 1 - C(3,2)/C(4,2) = 0.5; b: 1 - C(2,2)/C(4,2) = 5/6; mean = 2/3.
    assert m["eval/pass@k"] == pytest.approx((0.5 + 5 / 6) / 2)
    assert m["eval/sample_accuracy"] == pytest.approx(3 / 8)
    assert m["eval/accuracy_len3"] == 0.0 and m["eval/accuracy_len1"] == 1.0
    assert m["eval/n_problems"] == 2 and "time_s" in m
    assert comb(4, 2) == 6  # the C(4,2) used above


def test_evaluate_dataset_problems_outcome_only():
    problems = [TextProblem("q1", "What is 6*7?", "42"), TextProblem("q2", "Half of 1?", "0.5")]
    answers = {
        "What is 6*7?": ("6*7 = \\boxed{42}", ["42", "41"]),
        "Half of 1?": ("1/3", ["0.5", "\\boxed{\\frac{1}{2}}"]),
    }
    m = evaluate_policy(None, problems, k=1, n_samples=2, generate_fn=_fake_generator(answers))
    assert m["eval/accuracy"] == 0.5  # q1 right, q2 wrong (1/3)
    assert m["eval/sample_accuracy"] == 0.75  # 42, 0.5 and 1/2 right; 41 wrong
    assert m["eval/pass@k"] == 0.75
    assert math.isnan(m["eval/step_accuracy"]) and m["eval/first_error_hist"] == {}


def test_evaluate_rejects_bad_arguments():
    p = [problem_from_prompt("2+3=")]
    with pytest.raises(ValueError, match="n_samples"):
        evaluate_policy(None, p, k=4, n_samples=2, generate_fn=_fake_generator({}))
    with pytest.raises(ValueError, match="policy_dir or generate_fn"):
        evaluate_policy(None, p)
    with pytest.raises(ValueError, match="empty"):
        evaluate_policy(None, [], generate_fn=_fake_generator({}))
    with pytest.raises(ValueError, match="no default prompt/label functions for str"):
        evaluate_policy(None, ["2+3="], generate_fn=_fake_generator({}))
    with pytest.raises(ValueError, match="expected 1 lists of 1"):
        evaluate_policy(None, p, generate_fn=lambda prompts, n, temp: [])


def test_tiny_sft_then_eval_plumbing(tmp_path):
    task = ArithmeticTask(min_steps=1, max_steps=2, seed=0)
    args = dict(
        task=task,
        hidden=64,
        layers=1,
        heads=2,
        kv_heads=1,
        batch_size=8,
        lr=3e-3,
        warmup=5,
        seed=0,
        progress=False,
        log_every=5,
    )
    summary = run_sft(out_dir=str(tmp_path / "run"), batches=20, **args)
    policy = tmp_path / "run" / "policy"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (policy / name).is_file(), name
    assert json.loads((tmp_path / "run" / "sft_summary.json").read_text())["batches"] == 20
    assert summary["policy_dir"] == str(policy) and "time_s" in summary
    losses = [loss for _, loss in summary["losses"]]
    assert len(losses) == 4 and losses[-1] < losses[0]  # 20 batches already lower the loss
    assert summary["final_loss"] == losses[-1]

    again = run_sft(out_dir=str(tmp_path / "more"), batches=2, init_dir=str(policy), **args)
    assert again["params"] == summary["params"]

    torch.manual_seed(0)
    problems = task.sample(6, "eval", seed=1)
    m = evaluate_policy(str(policy), problems, k=2, max_new_tokens=24, seed=0)
    for key in ("eval/accuracy", "eval/step_accuracy", "eval/pass@k", "eval/sample_accuracy", "eval/format_rate"):
        assert 0.0 <= m[key] <= 1.0, key
    assert sum(m["eval/first_error_hist"].values()) == 6
    console = Console(record=True, width=120)
    print_eval_table(m, console=console)
    assert "eval/pass@k" in console.export_text()
