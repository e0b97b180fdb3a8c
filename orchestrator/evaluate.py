"""Held-out evaluation of a policy: greedy accuracy, per-step accuracy, pass@k, first-error histogram.

pass@k uses the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on
Code", eq. 1): with n samples of which c are correct, pass@k = 1 - C(n-c, k) / C(n, k), averaged over
problems. Step accuracy is the oracle's ``step_correct`` rate over all steps of the greedy answers.

Generation defaults to batched Hugging Face ``generate`` on CPU (left padding); ``generate_fn(prompts,
n, temperature) -> list[list[str]]`` (n texts per prompt; temperature 0 means greedy) plugs in any
other generator, e.g. the train loop's vLLM actors.
"""

from __future__ import annotations

import time
from collections import Counter
from math import comb

import torch
from rich.console import Console
from rich.table import Table

from tasks.arithmetic import Problem, prompt_text
from tasks.datasets import TextProblem, label_text_answer, text_prompt
from tasks.models import hf_generate, load_policy
from tasks.oracle import label_response
from tasks.tokenizer import load_tokenizer

# Problem type -> (policy prompt text, labeller). Dataset problems only have outcome labels.
PROBLEM_KINDS = {Problem: (prompt_text, label_response), TextProblem: (text_prompt, label_text_answer)}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    return 1.0 - comb(n - c, k) / comb(n, k)


def _greedy_metrics(problems, labels) -> dict:
    steps = sum(lab.num_steps for lab in labels)
    stepped = [lab for lab in labels if lab.num_steps or lab.first_error is not None]  # has step labels
    hist = Counter("none" if lab.first_error is None else str(lab.first_error + 1) for lab in stepped)
    keys = sorted((k for k in hist if k != "none"), key=int) + (["none"] if "none" in hist else [])
    m = {
        "eval/accuracy": sum(lab.outcome for lab in labels) / len(labels),
        # NaN when no step is labelled (dataset problems; or every response empty): unknown, not 0.
        "eval/step_accuracy": sum(sum(lab.step_correct) for lab in labels) / steps if steps else float("nan"),
        "eval/format_rate": sum(lab.format_ok for lab in labels) / len(labels),
        "eval/first_error_hist": {k: hist[k] for k in keys},  # 1-based step position -> count
    }
    by_len: dict[int, list[bool]] = {}
    for p, lab in zip(problems, labels, strict=True):
        if hasattr(p, "ops"):
            by_len.setdefault(len(p.ops), []).append(lab.outcome)
    for n_ops in sorted(by_len):
        m[f"eval/accuracy_len{n_ops}"] = sum(by_len[n_ops]) / len(by_len[n_ops])
        m[f"eval/count_len{n_ops}"] = len(by_len[n_ops])
    return m


def _checked(outs: list[list[str]], n_prompts: int, n: int) -> list[list[str]]:
    """A generator that returns too few or too many texts would silently skew every metric."""
    if len(outs) != n_prompts or any(len(o) != n for o in outs):
        raise ValueError(
            f"generate_fn returned {len(outs)} lists of sizes {sorted({len(o) for o in outs})}, "
            f"expected {n_prompts} lists of {n}"
        )
    return outs


def evaluate_policy(
    policy_dir: str | None,
    problems: list,
    *,
    k: int = 4,
    n_samples: int | None = None,
    temperature: float = 1.0,
    max_new_tokens: int = 128,
    seed: int = 0,
    generate_fn=None,
    label_fn=None,
    prompt_fn=None,
    batch_size: int = 64,
) -> dict:
    """Evaluate on ``problems``. Greedy decoding gives accuracy, step accuracy, first-error histogram
    and accuracy by chain length; ``n_samples`` (default k) samples per problem at ``temperature``
    give ``eval/pass@k`` (k itself in ``eval/k``) and ``eval/sample_accuracy``. k=0 skips sampling.
    ``policy_dir`` may be None when ``generate_fn`` is given. ``prompt_fn`` / ``label_fn`` default by problem type
    (``PROBLEM_KINDS``): arithmetic chains get oracle step labels, dataset problems outcome only."""
    if not problems:
        raise ValueError("evaluate_policy: problems is empty")
    n = k if n_samples is None else n_samples
    if k < 0 or (k > 0 and n < k):
        raise ValueError(f"evaluate_policy: need 0 <= k <= n_samples, got k={k} n_samples={n}")
    kind = type(problems[0])
    if (prompt_fn is None or label_fn is None) and kind not in PROBLEM_KINDS:
        raise ValueError(
            f"evaluate_policy: no default prompt/label functions for {kind.__name__}; "
            f"pass prompt_fn and label_fn (known: {[t.__name__ for t in PROBLEM_KINDS]})"
        )
    prompt_fn = prompt_fn or PROBLEM_KINDS[kind][0]
    label_fn = label_fn or PROBLEM_KINDS[kind][1]
    t0 = time.time()
    if generate_fn is None:
        if policy_dir is None:
            raise ValueError("evaluate_policy: give policy_dir or generate_fn")
        model, tokenizer = load_policy(policy_dir).eval(), load_tokenizer(policy_dir)

        def generate_fn(prompts, n_per, temp):
            return hf_generate(model, tokenizer, prompts, n_per, temp, max_new_tokens, batch_size)

    torch.manual_seed(seed)
    prompts = [prompt_fn(p) for p in problems]
    greedy = [outs[0] for outs in _checked(generate_fn(prompts, 1, 0.0), len(prompts), 1)]
    labels = [label_fn(p, text) for p, text in zip(problems, greedy, strict=True)]
    m = _greedy_metrics(problems, labels)
    m["eval/n_problems"] = len(problems)
    if k > 0:
        samples = _checked(generate_fn(prompts, n, temperature), len(prompts), n)
        correct = [sum(label_fn(p, t).outcome for t in outs) for p, outs in zip(problems, samples, strict=True)]
        m["eval/pass@k"] = sum(pass_at_k(n, c, k) for c in correct) / len(problems)
        m["eval/k"] = k
        m["eval/sample_accuracy"] = sum(correct) / (n * len(problems))
    m["time_s"] = time.time() - t0
    return m


def print_eval_table(metrics: dict, title: str = "evaluation", console: Console | None = None) -> None:
    """One row per metric; the first-error histogram as 'step: count' pairs."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if isinstance(value, dict):
            value = "  ".join(f"{k}: {v}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:.3f}"
        table.add_row(key, str(value))
    (console or Console()).print(table)
