"""PRM layouts of tasks/prm_formats.py on tiny local models, and the RewardWorker scoring them in batches.

Each layout is checked against its reference recipe: Math-Shepherd (2312.08935) softmaxes the "+"/"-"
logits at every "ки" tag of ``f"{question} {step} ки\\n..."``; Qwen2.5-Math-PRM (2501.07301) softmaxes a
2-class head at every "<extra_0>" of its chat-templated input; ours reads a token classifier at the step
delimiter. Batched scoring (right padding, chunks) must equal scoring each item alone.
"""

import copy
import dataclasses
import math
import os
from pathlib import Path

import pytest
import torch

from algo.trajectory import Trajectory
from tasks.models import make_tiny_prm, make_tiny_separator_prm, make_tiny_step_tag_prm, prm_step_scores
from tasks.prm_formats import PRM_FORMATS, PRMFormat, TokenClassificationPRM
from tasks.tokenizer import load_tokenizer
from workers.reward import RewardWorker

ROOT = Path(__file__).resolve().parents[2]
BASE_POLICY = str(ROOT / "tasks" / "assets" / "base_policy")
ITEMS = [
    ("3+4-2=\n", ["3+4=7 -2", "7-2=5", "A5"]),
    ("1+1=\n", ["1+1=2"]),
    ("5-5=\n", []),  # no steps: no forward, no scores
    ("8+4-3+1=\n", ["8+4=2 -3+1", "2-3=9 +1", "9+1=0", "A0"]),
    ("5-5=\n", ["5-5=0", "A0"]),
]
# A Qwen-style chat template (system / user / assistant turns), enough to check the rendered layout.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _random_head(model: torch.nn.Module, path: Path, seed: int = 0) -> None:
    """The builders' heads start at zero (0.5 everywhere); a random head makes every score different."""
    torch.manual_seed(seed)
    torch.nn.init.normal_(model.score.weight, std=0.5)
    torch.nn.init.normal_(model.score.bias, std=0.5)
    model.save_pretrained(path)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("prms")
    tc = make_tiny_prm(root / "tc", policy_dir=BASE_POLICY, num_labels=2)
    _random_head(tc, root / "tc")
    make_tiny_step_tag_prm(root / "st", BASE_POLICY)  # the policy's own "+"/"-" logits: not constant
    sh = make_tiny_separator_prm(root / "sh", BASE_POLICY)
    _random_head(sh, root / "sh", seed=1)
    return {"token_classification": str(root / "tc"), "step_tag": str(root / "st"), "separator_head": str(root / "sh")}


def load(fmt: str, path: str, **options) -> PRMFormat:
    return PRM_FORMATS[fmt].load(path, dtype=torch.float32, device="cpu", trust_remote_code=False, **options)


def test_format_names_are_one_list():
    from orchestrator.config import RewardSourceConfig
    from workers.sources import PRM_FORMATS as NAMES

    assert NAMES == tuple(PRM_FORMATS)
    assert {cls.name: cls for cls in PRM_FORMATS.values()} == PRM_FORMATS
    doc = {f.name: f for f in dataclasses.fields(RewardSourceConfig)}["format"].metadata["doc"]
    assert all(name in doc for name in NAMES), doc


def test_builders_add_one_token_and_resize(dirs):
    from transformers import AutoConfig, AutoTokenizer

    for fmt, token in (("step_tag", "ки"), ("separator_head", "<extra_0>")):
        tok = AutoTokenizer.from_pretrained(dirs[fmt])
        assert len(tok.encode(token, add_special_tokens=False)) == 1
        assert AutoConfig.from_pretrained(dirs[fmt]).vocab_size == len(tok) == 262


# --------------------------------------------------------------------------------------- step_tag --
def test_step_tag_layout_and_reference_readout(dirs):
    scorer = load("step_tag", dirs["step_tag"])
    q, steps = ITEMS[3]
    ids, positions = scorer.input_ids(q, steps)
    assert scorer.tokenizer.decode(ids) == f"{q} " + " ки\n".join(steps) + " ки"  # Math-Shepherd's text
    # Math-Shepherd's own readout: softmax over the (good, bad) logits wherever the input holds the tag
    x = torch.tensor([ids])
    logits = scorer.model(input_ids=x).logits[:, :, [scorer.good_id, scorer.bad_id]]
    ref = logits.softmax(dim=-1)[:, :, 0][x == scorer.tag_ids[-1]]
    assert positions == (x[0] == scorer.tag_ids[-1]).nonzero().flatten().tolist()
    assert scorer.score([(q, steps)])[0] == pytest.approx(ref.tolist(), abs=1e-6)


def test_step_tag_score_is_the_sigmoid_of_the_logit_gap(dirs):
    """lm_head = 0 * h + bias: every position's logits are the bias, so each tag scores
    softmax(b_good, b_bad)[0] = sigmoid(b_good - b_bad) = sigmoid(1.5), whatever the other biases."""
    scorer = load("step_tag", dirs["step_tag"])
    head = torch.nn.Linear(scorer.model.config.hidden_size, scorer.model.config.vocab_size, bias=True)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.normal_(head.bias, std=3.0)
    with torch.no_grad():
        head.bias[scorer.good_id], head.bias[scorer.bad_id] = 2.0, 0.5
    scorer.model.lm_head = head
    expected = 1 / (1 + math.exp(-1.5))
    for scores, (_, steps) in zip(scorer.score(ITEMS), ITEMS, strict=True):
        assert scores == pytest.approx([expected] * len(steps), abs=1e-6)


def test_step_tag_needs_single_tokens(dirs):
    scorer = load("step_tag", dirs["step_tag"])
    with pytest.raises(ValueError, match="good_token '\\+\\+' must be a single token"):
        type(scorer)(scorer.model, scorer.tokenizer, good_token="++")


# --------------------------------------------------------------------------------- separator_head --
def test_separator_head_reads_only_the_separators(dirs):
    scorer = load("separator_head", dirs["separator_head"], batch_size=2)
    q, steps = ITEMS[0]
    ids, positions = scorer.input_ids(q, steps)
    assert scorer.tokenizer.decode(ids, skip_special_tokens=False) == q + "".join(s + "<extra_0>" for s in steps)
    # Qwen's reference readout (make_step_rewards): softmax of the head where the input is the separator
    x = torch.tensor([ids])
    ref = torch.softmax(scorer.model(input_ids=x).logits[x == scorer.sep_id], dim=-1)[:, 1]
    assert scorer.score([(q, steps)])[0] == pytest.approx(ref.tolist(), abs=1e-6)

    base = scorer.score(ITEMS)
    fed: dict[str, torch.Tensor] = {}
    scorer.model.register_forward_pre_hook(lambda m, a, kw: fed.update(ids=kw["input_ids"]), with_kwargs=True)
    shift = {"at_separators": False}

    def add_to_logits(module, args, out):
        at = (fed["ids"] == scorer.sep_id).unsqueeze(-1)
        where = at if shift["at_separators"] else ~at
        return out + torch.tensor([-4.0, 4.0]) * where

    scorer.model.score.register_forward_hook(add_to_logits)
    assert scorer.score(ITEMS) == base  # every other position's logits moved: not one score did
    shift["at_separators"] = True
    moved = scorer.score(ITEMS)
    assert all(m > b for ms, bs in zip(moved, base, strict=True) for m, b in zip(ms, bs, strict=True))


def test_separator_head_uses_the_chat_template(tmp_path):
    """With a chat template the input is Qwen's reference one: system, question, steps joined by the
    separator (and closed by one) as the assistant turn, then the end of the turn."""
    make_tiny_separator_prm(tmp_path / "chat", BASE_POLICY, chat_template=CHAT_TEMPLATE)
    scorer = load("separator_head", str(tmp_path / "chat"))
    q, steps = ITEMS[0]
    ids, positions = scorer.input_ids(q, steps)
    messages = [
        {"role": "system", "content": scorer.system},
        {"role": "user", "content": q},
        {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"},
    ]
    reference = scorer.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert scorer.tokenizer.decode(ids, skip_special_tokens=False) == reference
    assert "\\boxed{}" in reference and [ids[p] for p in positions] == [scorer.sep_id] * len(steps)
    assert len(scorer.score([(q, steps)])[0]) == len(steps)


# --------------------------------------------------------------------------- token_classification --
@pytest.mark.parametrize("bias", [[0.7], [0.2, 0.9]])
def test_token_classification_readout(tmp_path, bias):
    """Zero weights and a bias b: sigmoid(b) with one label, softmax(b)[1] = sigmoid(b1 - b0) with two."""
    model = make_tiny_prm(tmp_path / "prm", policy_dir=BASE_POLICY, num_labels=len(bias))
    with torch.no_grad():
        model.score.bias.copy_(torch.tensor(bias))
    scorer = TokenClassificationPRM(model.eval(), load_tokenizer(BASE_POLICY), separator="\n")
    expected = 1 / (1 + math.exp(-0.7))
    assert scorer.score(ITEMS[:2]) == [pytest.approx([expected] * 3, abs=1e-6), pytest.approx([expected], abs=1e-6)]


def test_token_classification_is_prm_step_scores(dirs):
    scorer = load("token_classification", dirs["token_classification"])
    for q, steps in ITEMS:
        assert scorer.score([(q, steps)])[0] == prm_step_scores(scorer.model, scorer.tokenizer, q, steps)


# ---------------------------------------------------------------------------------------- batches --
@pytest.mark.parametrize("fmt", list(PRM_FORMATS))
def test_a_batch_scores_as_each_item_alone(dirs, fmt):
    scorer = load(fmt, dirs[fmt], batch_size=2)  # 4 items with steps: two chunks, padded within each
    batched = scorer.score(ITEMS)
    assert [len(s) for s in batched] == [len(steps) for _, steps in ITEMS]
    assert len({round(p, 4) for s in batched for p in s}) > 3  # a real spread, not one constant
    for scores, item in zip(batched, ITEMS, strict=True):
        assert all(type(p) is float and 0.0 <= p <= 1.0 for p in scores)
        assert scores == pytest.approx(scorer.score([item])[0], abs=1e-5)


# ------------------------------------------------------------------------------------ RewardWorker --
def make_traj(tok, uid: str, question: str, steps: list[str]) -> Trajectory:
    """One "\\n"-terminated step span per step, as the generator cuts them."""
    ids, spans = [], []
    for step in steps:
        piece = tok.encode(step + "\n")
        spans.append((len(ids), len(ids) + len(piece)))
        ids += piece
    return Trajectory(
        uid=uid,
        prompt_id=uid,
        group_id=0,
        policy_version=0,
        prompt_ids=tok.encode(question),
        response_ids=ids,
        behavior_logprobs=[-1.0] * len(ids),
        finish_reason="stop",
        step_spans=spans,
        prompt_text=question,
        response_text=tok.decode(ids),
        answer="0",
        question=question,
    )


def make_worker(sources: list[dict]) -> RewardWorker:
    return RewardWorker(
        tokenizer_dir=BASE_POLICY,
        sources=sources,
        meaning="step_correct",
        transform="identity",
        transform_params={},
        task_kind="jsonl",
        device="cpu",
    )


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(BASE_POLICY)


@pytest.mark.parametrize("fmt", list(PRM_FORMATS))
def test_worker_scores_a_batch_in_one_forward(dirs, tok, fmt):
    w = make_worker([{"name": "prm", "path": dirs[fmt], "format": fmt}, {"name": "outcome"}])
    prm = w.step_sources[0][2]
    scorer = next(c.cell_contents for c in prm.__closure__ if isinstance(c.cell_contents, PRMFormat))
    assert type(scorer) is PRM_FORMATS[fmt] and prm in w.batched_sources
    trajs = [make_traj(tok, f"t{i}", q, steps) for i, (q, steps) in enumerate(ITEMS)]
    forwards = []
    scorer.register_forward_pre_hook(lambda m, a, kw: forwards.append(kw["input_ids"].shape), with_kwargs=True)
    batched = w.score_batch(copy.deepcopy(trajs))
    assert len(forwards) == 1 and forwards[0][0] == 4  # the 4 trajectories with steps, one forward
    expected = scorer.score(ITEMS)  # the steps reach the PRM without their "\n" delimiter
    for t, alone, want in zip(batched, trajs, expected, strict=True):
        assert t.sample_valid, t.info.get("reward_error")
        assert t.step_rewards == pytest.approx(want, abs=1e-5)
        w.score(alone)  # score(traj) is score_batch([traj])[0]
        assert alone.step_rewards == pytest.approx(t.step_rewards, abs=1e-5)
        assert (alone.outcome_reward, alone.sample_valid) == (t.outcome_reward, t.sample_valid)


def test_worker_rejects_an_unknown_format():
    with pytest.raises(ValueError, match="reward source 'prm': unknown format 'math_shepherd'; valid: token_cl"):
        make_worker([{"name": "prm", "path": "unused", "format": "math_shepherd"}])


def _fake_prm(w: RewardWorker, calls: list[str], bad: dict[str, object]) -> None:
    """A batched step source scoring 0.25 per step; uid "boom" raises (alone and in any batch holding
    it), uids in `bad` get that value instead of 0.25 (from the batched call too)."""

    def one(traj, texts):
        calls.append(traj.uid)
        if traj.uid == "boom":
            raise RuntimeError("prm exploded")
        return [bad.get(traj.uid, 0.25)] * traj.num_steps

    def batch(trajs, texts):
        calls.append("batch")
        if any(t.uid == "boom" for t in trajs):
            raise RuntimeError("the batch exploded")
        return [[bad.get(t.uid, 0.25)] * t.num_steps for t in trajs]

    w.step_sources.append(("fake_prm", 1.0, one))
    w.batched_sources[one] = batch


def test_a_failing_trajectory_masks_only_itself(tok):
    w = make_worker([{"name": "outcome"}])
    calls: list[str] = []
    _fake_prm(w, calls, {"nan": math.nan})
    uids = ["a", "boom", "nan", "b"]
    out = w.score_batch([make_traj(tok, uid, *ITEMS[0]) for uid in uids])
    # the batch raised: each trajectory re-run alone, so the error lands on the one that caused it
    assert calls == ["batch", *uids]
    by_uid = {t.uid: t for t in out}
    assert [t.uid for t in out] == uids
    assert by_uid["boom"].info["reward_error"] == "RuntimeError: prm exploded"
    assert "reward source 'fake_prm' step 0: score nan" in by_uid["nan"].info["reward_error"]
    for uid in ("boom", "nan"):
        t = by_uid[uid]
        assert not t.sample_valid and t.step_rewards == [0.0] * 3 and t.outcome_reward == 0.0
    for uid in ("a", "b"):
        t = by_uid[uid]
        assert t.sample_valid and t.step_rewards == [0.25] * 3 and "reward_error" not in t.info
    assert all("reward_s" in t.info and "scored_at" in t.info for t in out)

    calls.clear()  # without the raising one: one batched call, the NaN still masks only its own
    out = w.score_batch([make_traj(tok, uid, *ITEMS[0]) for uid in ("a", "nan", "b")])
    assert calls == ["batch"] and [t.sample_valid for t in out] == [True, False, True]


def test_config_validates_the_format():
    from orchestrator.validate import ConfigError, load_config

    demo = os.path.join(ROOT, "configs", "demo_cpu.yaml")
    with pytest.raises(ConfigError) as err:
        load_config(demo, ["reward.sources=[{name: prm, path: p, format: math_shepherd}]"], check_files=False)
    assert str(err.value).startswith(
        "reward.sources[0].format: bad value 'math_shepherd'; allowed: one of "
        "token_classification, step_tag, separator_head"
    )
    cfg = load_config(demo, ["reward.sources=[{name: prm, path: p, format: step_tag}]"], check_files=False)
    assert cfg.reward.sources[0].format == "step_tag"
    cfg = load_config(demo, ["reward.sources=[{name: prm, path: p}]"], check_files=False)
    assert cfg.reward.sources[0].format == "token_classification"
