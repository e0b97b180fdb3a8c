"""Tokenizer round trip through AutoTokenizer, tiny model directories, PRM step scoring, base policy asset."""

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

from tasks.arithmetic import ArithmeticTask, prompt_text, solution_text
from tasks.models import (
    load_token_classifier,
    make_tiny_critic,
    make_tiny_policy,
    make_tiny_prm,
    prm_input_ids,
    prm_step_scores,
    tiny_qwen2_config,
)
from tasks.oracle import label_response
from tasks.tokenizer import load_tokenizer, task_tokenizer

BASE_POLICY = Path(__file__).resolve().parents[2] / "tasks" / "assets" / "base_policy"
TEXTS = [
    "1+5-8+4=\n1+5=6 -8+4\n6-8=8 +4\n8+4=2\nA2\n",
    "\n\n",
    " \n",
    "a.\n\nb",
    "x  y\t\n z",
    "Step 1: 12+30=42.\n\nStep 2: so \\boxed{42}\n",
    "caf\u00e9 \u65e5\u672c \U0001f600\n",
    "=\n+\n-\n",
]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("policy")
    tok = task_tokenizer(ArithmeticTask(seed=0), n_texts=300)
    make_tiny_policy(out, tok, hidden=64, layers=2, heads=2, kv_heads=1, seed=0)
    return out


def test_autotokenizer_round_trip_keeps_newlines(policy_dir):
    raw = Tokenizer.from_file(str(policy_dir / "tokenizer.json"))  # what we trained
    auto = AutoTokenizer.from_pretrained(str(policy_dir))  # what the learner and vLLM load
    for text in TEXTS:
        ids = auto.encode(text, add_special_tokens=False)
        assert ids == raw.encode(text).ids, text  # same ids however it is loaded
        assert auto.decode(ids) == text  # every byte survives, "\n" included
    newline = auto.encode("\n", add_special_tokens=False)
    assert len(newline) == 1 and auto.decode(newline) == "\n"
    assert auto.eos_token_id == 0 and auto.pad_token_id == 1
    assert auto.decode([auto.eos_token_id]) == "<|endoftext|>"


def test_every_digit_is_its_own_token(policy_dir):
    tok = load_tokenizer(policy_dir)
    assert tok.padding_side == "left"
    ids = tok.encode("8+4=12\n", add_special_tokens=False)
    assert [tok.decode([i]) for i in ids] == ["8", "+", "4", "=", "1", "2", "\n"]


def test_policy_dir_loads_with_auto_classes(policy_dir):
    model = AutoModelForCausalLM.from_pretrained(str(policy_dir))
    cfg = model.config
    assert cfg.hidden_size // cfg.num_attention_heads == 32  # a vLLM CPU attention head size
    assert next(model.parameters()).dtype == torch.float32
    assert (policy_dir / "model.safetensors").is_file() and (policy_dir / "generation_config.json").is_file()
    logits = model(input_ids=torch.tensor([[5, 6, 7]])).logits
    assert logits.shape == (1, 3, cfg.vocab_size)


def test_bad_head_size_is_refused():
    with pytest.raises(ValueError, match="head size"):
        tiny_qwen2_config(300, 0, 1, hidden=96, heads=4)  # 24 is not a vLLM CPU head size


def test_critic_shares_the_policy_backbone_and_starts_at_zero(policy_dir, tmp_path):
    make_tiny_critic(tmp_path / "critic", policy_dir)
    critic = AutoModelForTokenClassification.from_pretrained(str(tmp_path / "critic"))
    policy = AutoModelForCausalLM.from_pretrained(str(policy_dir))
    for (name, a), (_, b) in zip(critic.model.state_dict().items(), policy.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    values = critic(input_ids=torch.tensor([[5, 6, 7, 8]])).logits
    assert values.shape == (1, 4, 1) and torch.count_nonzero(values) == 0


def test_prm_input_positions_are_the_separators(policy_dir):
    tok = load_tokenizer(policy_dir)
    q, steps = "1+5-8+4=\n", ["1+5=6 -8+4", "6-8=8 +4", "8+4=2", "A2"]
    ids, positions = prm_input_ids(tok, q, steps, "\n")
    assert tok.decode(ids) == q + "".join(s + "\n" for s in steps)
    assert len(positions) == 4 and positions == sorted(positions) and positions[-1] == len(ids) - 1
    assert all(tok.decode([ids[p]]) == "\n" for p in positions)
    sep = " \u043a\u0438\n"  # " ки\n" (Math-Shepherd): several tokens
    width = len(tok.encode(sep, add_special_tokens=False))
    ids2, pos2 = prm_input_ids(tok, q, steps, sep)  # scored at the separator's last token
    assert width > 1 and all(tok.decode(ids2[p - width + 1 : p + 1]) == sep for p in pos2)


@pytest.mark.parametrize("num_labels", [1, 2])
def test_prm_scores_one_per_step_and_causal(policy_dir, tmp_path, num_labels):
    tok = load_tokenizer(policy_dir)
    make_tiny_prm(
        tmp_path / "prm", tokenizer=tok, num_labels=num_labels, hidden=64, layers=2, heads=2, kv_heads=1, seed=1
    )
    prm = load_token_classifier(tmp_path / "prm").eval()
    steps = ["1+5=6 -8+4", "6-8=8 +4", "8+4=2", "A2"]
    scores = prm_step_scores(prm, tok, "1+5-8+4=\n", steps)
    assert len(scores) == 4 and all(0.0 < s < 1.0 for s in scores)
    assert len(set(scores)) > 1  # a random head does not score every step alike
    # A step's score depends only on the question and the steps up to it (causal, exact positions).
    assert prm_step_scores(prm, tok, "1+5-8+4=\n", steps[:2]) == pytest.approx(scores[:2], abs=1e-6)
    assert prm_step_scores(prm, tok, "1+5-8+4=\n", []) == []


def test_untrained_prm_from_policy_scores_one_half(policy_dir, tmp_path):
    make_tiny_prm(tmp_path / "prm", policy_dir=policy_dir)
    prm = load_token_classifier(tmp_path / "prm")
    assert prm_step_scores(prm, load_tokenizer(policy_dir), "1+2=\n", ["1+2=3", "A3"]) == [0.5, 0.5]


@pytest.mark.skipif(not BASE_POLICY.is_dir(), reason="base policy asset not built yet")
def test_committed_base_policy_loads_and_answers_in_format():
    files = list(BASE_POLICY.iterdir())
    assert sum(f.stat().st_size for f in files) < 10 * 2**20
    assert (BASE_POLICY / "model.safetensors").is_file()
    tok = load_tokenizer(BASE_POLICY)
    model = AutoModelForCausalLM.from_pretrained(str(BASE_POLICY)).eval()
    problems = ArithmeticTask(seed=0).sample(8, "eval", seed=0)
    enc = tok([prompt_text(p) for p in problems], return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=80, do_sample=False, pad_token_id=tok.pad_token_id)
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    labels = [label_response(p, t) for p, t in zip(problems, texts, strict=True)]
    assert sum(lab.format_ok for lab in labels) >= 6  # it learned the format ...
    # ... and gold responses are far more likely under it than under chance (ln(261) = 5.6 per token).
    for p in problems:
        prompt = tok.encode(prompt_text(p), add_special_tokens=False)
        response = tok.encode(solution_text(p), add_special_tokens=False) + [tok.eos_token_id]
        labels = torch.tensor([[-100] * len(prompt) + response])
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([prompt + response]), labels=labels).loss
        assert loss.item() < 1.0, (p.prompt, loss.item())
