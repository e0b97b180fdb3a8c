"""task.chat_template: JSONL prompts inside the policy tokenizer's chat template.

Nothing is downloaded: the tokenizer is a byte-level BPE trained here (tasks/tokenizer.py) with ChatML-style
special tokens and a small Jinja template, saved to a directory so the task loads it the way a run does.
"""

import dataclasses
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from orchestrator.config import ExperimentConfig
from orchestrator.data import prompt_requests, task_from_config
from tasks.chat import CHAT_TEMPLATES, chat_formatter
from tasks.datasets import DatasetError

BASE_POLICY = str(Path(__file__).resolve().parents[2] / "tasks" / "assets" / "base_policy")  # has no template
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def templated(question: str) -> str:
    """What TEMPLATE renders for one user message with the generation prompt, written out by hand."""
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory) -> str:
    from tasks.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer(["What is 12+30?\n\nIt is 42.", "user assistant"] * 20, vocab_size=300)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = TEMPLATE
    out = tmp_path_factory.mktemp("chat_tokenizer")
    tok.save_pretrained(str(out))
    return str(out)


@pytest.fixture(scope="module")
def chat_tok(chat_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(chat_dir)


def _jsonl(path: Path, prompts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p, "answer": "1"}) + "\n" for p in prompts))
    return path


def _cfg(tmp_path, policy: str, template: str, max_model_len: int = 256, skip: bool = False, prompts=("1+1=",)):
    train = _jsonl(tmp_path / "train.jsonl", list(prompts))
    eval_ = _jsonl(tmp_path / "eval.jsonl", ["2+2="])
    return OmegaConf.merge(
        OmegaConf.structured(ExperimentConfig),
        {
            "task": {
                "kind": "jsonl",
                "train_path": str(train),
                "eval_path": str(eval_),
                "skip_bad_rows": skip,
                "chat_template": template,
            },
            "model": {"policy": policy},
            "rollout": {"max_model_len": max_model_len},
        },
    )


def test_formatter_applies_the_tokenizer_template(chat_tok):
    assert chat_formatter("model", chat_tok, "dir")("What is 1+2?") == templated("What is 1+2?")
    assert chat_formatter("none", chat_tok)("What is 1+2?") == "What is 1+2?"
    with pytest.raises(ValueError, match=r"task.chat_template: unknown mode 'chat'; valid: none, model"):
        chat_formatter("chat", chat_tok)


def test_jsonl_task_prompts_the_templated_text_and_keeps_the_question(tmp_path, chat_dir):
    task = task_from_config(_cfg(tmp_path, chat_dir, "model", prompts=["What is 12+30?"]))
    (p,) = task.train
    assert task.prompt_text(p) == templated("What is 12+30?")
    assert task.question_text(p) == "What is 12+30?"
    (req,) = prompt_requests(task, [p])
    assert (req.text, req.question, req.answer) == (templated("What is 12+30?"), "What is 12+30?", "1")
    # the default leaves prompts as written
    plain = task_from_config(_cfg(tmp_path, chat_dir, "none", prompts=["What is 12+30?"]))
    assert plain.prompt_text(plain.train[0]) == plain.question_text(plain.train[0]) == "What is 12+30?"


def test_overlong_check_counts_the_templated_tokens(tmp_path, chat_dir, chat_tok):
    max_model_len = 64
    limit = max_model_len - 2
    overhead = len(chat_tok.encode(templated("7"))) - len(chat_tok.encode("7"))
    assert overhead > 0
    # digits are single tokens with this tokenizer (Qwen2's split regex isolates them): n digits -> n tokens
    fits_bare_only = "5" * (limit - overhead + 1)  # fits as written, one token too many once templated
    fits_both = "5" * (limit - overhead)
    assert len(chat_tok.encode(fits_bare_only)) <= limit
    assert len(chat_tok.encode(templated(fits_both))) == limit
    prompts = [fits_both, fits_bare_only]

    bare = task_from_config(_cfg(tmp_path, chat_dir, "none", max_model_len, skip=True, prompts=prompts))
    assert (len(bare.train), bare.train_skipped) == (2, 0)
    task = task_from_config(_cfg(tmp_path, chat_dir, "model", max_model_len, skip=True, prompts=prompts))
    assert ([p.prompt for p in task.train], task.train_skipped) == ([fits_both], 1)
    with pytest.raises(DatasetError) as err:
        task_from_config(_cfg(tmp_path, chat_dir, "model", max_model_len, skip=False, prompts=prompts))
    assert str(err.value).startswith(
        f"{tmp_path / 'train.jsonl'}:2: field 'prompt' has {limit + 1} tokens with the policy tokenizer "
        "(with task.chat_template)"
    )


def test_template_less_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError) as err:
        task_from_config(_cfg(tmp_path, BASE_POLICY, "model"))
    message = str(err.value)
    assert message.startswith("task.chat_template=model: the tokenizer in ")
    assert BASE_POLICY in message and "has no chat template" in message


def test_choices_come_from_one_list():
    from orchestrator.config import TaskConfig

    field = next(f for f in dataclasses.fields(TaskConfig) if f.name == "chat_template")
    assert field.default == CHAT_TEMPLATES[0] == "none"
    assert " | ".join(CHAT_TEMPLATES) in field.metadata["doc"]
