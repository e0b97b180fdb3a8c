"""Supervised fine-tuning of the tiny policy on generated gold solutions (the RL starting point).

Plain single-process torch on one thread: the loss is next-token cross-entropy on response tokens only
(prompt tokens and padding are masked), averaged over the batch's response tokens. Prompt and response
are tokenized separately and concatenated, exactly as a generator sees them (prompt ids, then sampled
ids), so the policy never trains on a BPE merge across the prompt/response boundary. The learning rate
warms up linearly, then stays constant: a run stopped at batch B equals a run with ``batches=B``, which
is how the base policy's accuracy band was picked (see ``checkpoint_every``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from algo.schedules import lr_factor
from engine.process import prepare_process
from tasks.models import load_policy, make_tiny_policy, save_model_dir
from tasks.tokenizer import load_tokenizer, task_tokenizer


def encode_examples(tokenizer, task, problems) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids + eos) per problem."""
    eos = tokenizer.eos_token_id
    return [
        (
            tokenizer.encode(task.prompt_text(p), add_special_tokens=False),
            tokenizer.encode(task.solution_text(p), add_special_tokens=False) + [eos],
        )
        for p in problems
    ]


def collate_sft(examples, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids [B, T], attention mask [B, T] and loss mask [B, T-1] (1 where the
    *target* token ids[:, t+1] is a response token)."""
    width = max(len(p) + len(r) for p, r in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(examples), width), dtype=torch.long)
    loss_mask = torch.zeros((len(examples), width - 1))
    for i, (p, r) in enumerate(examples):
        n = len(p) + len(r)
        ids[i, :n] = torch.tensor(p + r)
        attn[i, :n] = 1
        loss_mask[i, len(p) - 1 : n - 1] = 1.0
    return ids, attn, loss_mask


def response_loss(model, ids, attn, loss_mask) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]  # [B, T-1, V]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    return (nll * loss_mask).sum() / loss_mask.sum()


def run_sft(
    *,
    out_dir: str,
    task,
    hidden: int = 128,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    vocab_size: int = 300,
    batches: int = 1000,
    batch_size: int = 64,
    lr: float = 1e-3,
    warmup: int = 200,
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
    seed: int = 0,
    progress: bool = True,
    init_dir: str | None = None,
    log_every: int = 50,
    checkpoint_every: int = 0,
    threads: int = 1,
) -> dict:
    """Train the policy on ``task``'s gold solutions; write ``<out_dir>/policy`` and return a summary.

    ``task`` is any object with ``sample(n, split)``, ``prompt_text(p)``, ``solution_text(p)`` (e.g.
    ``ArithmeticTask(**task_args)``). ``init_dir`` continues from an existing policy dir (its tokenizer
    and architecture; the model args are then ignored). ``checkpoint_every`` > 0 also saves
    ``<out_dir>/checkpoints/batch-<b>``. The summary has time_s, final_loss, losses, policy_dir.
    """
    if batches < 1 or batch_size < 1:
        raise ValueError(f"run_sft: batches and batch_size must be >= 1, got {batches}, {batch_size}")
    prepare_process(threads)
    torch.manual_seed(seed)
    out, t0 = Path(out_dir), time.time()
    policy_dir = out / "policy"
    if init_dir is None:
        tokenizer = task_tokenizer(task, vocab_size=vocab_size, seed=seed)
        model = make_tiny_policy(
            policy_dir,
            tokenizer,
            hidden=hidden,
            layers=layers,
            heads=heads,
            kv_heads=kv_heads,
            intermediate=intermediate,
            seed=seed,
        )
        tokenizer = load_tokenizer(policy_dir)  # use it the way vLLM will
    else:
        tokenizer, model = load_tokenizer(init_dir), load_policy(init_dir)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses: list[tuple[int, float]] = []
    window: list[float] = []
    bar = Progress(
        TextColumn("sft"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        disable=not progress,
    )
    with bar:
        job = bar.add_task("sft", total=batches, loss="-")
        for b in range(batches):
            ids, attn, mask = collate_sft(
                encode_examples(tokenizer, task, task.sample(batch_size, "train")), tokenizer.pad_token_id
            )
            for group in opt.param_groups:
                group["lr"] = lr * lr_factor(b, warmup_steps=warmup, total_steps=batches, schedule="constant")
            loss = response_loss(model, ids, attn, mask)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"run_sft: loss is {loss.item()} at batch {b}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            window.append(loss.item())
            if (b + 1) % log_every == 0 or b + 1 == batches:
                losses.append((b + 1, sum(window) / len(window)))
                window = []
                bar.update(job, loss=f"{losses[-1][1]:.3f}")
            if checkpoint_every and (b + 1) % checkpoint_every == 0 and b + 1 < batches:
                save_model_dir(model, tokenizer, out / "checkpoints" / f"batch-{b + 1}")
            bar.advance(job)
    save_model_dir(model, tokenizer, policy_dir)
    summary = {
        "time_s": time.time() - t0,
        "final_loss": losses[-1][1],
        "batches": batches,
        "batch_size": batch_size,
        "params": sum(p.numel() for p in model.parameters()),
        "policy_dir": str(policy_dir),
        "losses": losses,
    }
    (out / "sft_summary.json").write_text(json.dumps(summary, indent=1))
    return summary
