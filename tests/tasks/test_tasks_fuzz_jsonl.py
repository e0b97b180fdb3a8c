"""Fuzz of the data a run reads: malformed JSONL rows and prompts too long for the model.

Each bad row must be a clear error naming file:line and the field, or a skipped, counted row. Inputs come
from seeded generators, and every expected count is computed from what the generator made.
"""

import json
import random
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from orchestrator.config import ExperimentConfig
from orchestrator.data import task_from_config
from tasks.datasets import DatasetError, load_jsonl_problems, read_step_jsonl

BASE_POLICY = str(Path(__file__).resolve().parents[2] / "tasks" / "assets" / "base_policy")
N_BAD_ROWS = 1000


# ============================================================== JSONL rows

WORDS = ["Tom", "has", "3", "apples", "déjà", "vu", "数学", "问题", "🙂", "x^2", "\\frac{1}{2}", "ß", "?", "\t"]


def _text(rng: random.Random, n_max: int = 12) -> str:
    """Some words; the first is never whitespace, so the text is never blank."""
    return " ".join([rng.choice(WORDS[:-2])] + [rng.choice(WORDS) for _ in range(rng.randint(0, n_max))])


def _good_row(rng: random.Random) -> dict:
    """A valid row: unicode prompt, str / int / float answer, sometimes an id or extra fields."""
    row = {"prompt": _text(rng), "answer": rng.choice([str(rng.randint(0, 99)), rng.randint(-5, 5), 0.25])}
    if rng.random() < 0.3:
        row["id"] = rng.choice([rng.randint(0, 10**6), f"q-{rng.randint(0, 999)}", None])
    if rng.random() < 0.2:
        row["source"] = {"split": "train", "tags": [1, 2]}
    return row


def _good_line(rng: random.Random) -> tuple[bytes, dict]:
    row = _good_row(rng)
    if rng.random() < 0.05:
        row["prompt"] = "long " * rng.randint(20_000, 60_000)  # huge but valid (prompt length is a later check)
    line = json.dumps(row, ensure_ascii=rng.random() < 0.5).encode()
    if rng.random() < 0.2:
        line += b"\r"  # CRLF file
    if rng.random() < 0.1:
        line = b"  " + line + b"\t"
    return line, row


def _dumps(row) -> bytes:
    return json.dumps(row, ensure_ascii=False).encode()


def _with(rng, **fields) -> dict:
    row = _good_row(rng)
    row.update(fields)
    return row


def _without(rng, key: str) -> dict:
    row = _good_row(rng)
    del row[key]
    return row


def _truncated(rng):
    line = json.dumps(_good_row(rng), ensure_ascii=False)  # cut the text, not the bytes (that is non-UTF-8)
    return line[: rng.randint(1, len(line) - 1)].encode()


def _non_utf8(rng):
    line = _dumps(_good_row(rng))
    cut = line.index(b'"prompt": "') + len(b'"prompt": "')
    bad = rng.choice([b"\xff", b"\xc3", b"\xe9t\xe9", b"\xed\xa0\x80", b"\xf0\x9f\x99", b"\x80\x80"])
    return line[:cut] + bad + line[cut:]


def _nul(rng):
    line = _dumps(_good_row(rng))
    cut = rng.choice([line.index(b'"prompt": "') + len(b'"prompt": "'), 0, len(line)])
    return line[:cut] + b"\x00" + line[cut:]


def _duplicate(rng, key):
    row = _good_row(rng)
    body = _dumps(row)[1:-1]
    return b"{" + body + b", " + _dumps({key: row[key]})[1:-1] + b"}"


def _deep(rng):
    depth = rng.randint(50_000, 200_000)
    return b'{"prompt": ' + b"[" * depth + b"]" * depth + b', "answer": "1"}'


def _huge_bad(rng):
    row = _good_row(rng)
    row["prompt"] = "x" * rng.randint(200_000, 1_000_000)
    del row["answer"]
    return _dumps(row)


# (kind, line maker, fragment the error must contain after "path:line: ")
BAD_KINDS = [
    (
        "not json",
        lambda r: r.choice(
            [
                b"hello world",
                b"prompt: 1+1, answer: 2",
                b"{'prompt': 'q', 'answer': '1'}",
                b"<html>",
                b"{prompt: q}",
                b"}",
            ]
        ),
        "invalid JSON",
    ),
    ("truncated", _truncated, "invalid JSON"),
    ("trailing data", lambda r: _dumps(_good_row(r)) + r.choice([b" x", b" {}", b","]), "invalid JSON"),
    ("two objects", lambda r: _dumps(_good_row(r)) + _dumps(_good_row(r)), "invalid JSON"),
    (
        "not an object",
        lambda r: _dumps(r.choice([["q", "1"], 3, "q", None, True, 2.5, []])),
        "row must be a JSON object",
    ),
    ("no prompt", lambda r: _dumps(_without(r, "prompt")), "missing field 'prompt'"),
    ("no answer", lambda r: _dumps(_without(r, "answer")), "missing field 'answer'"),
    ("key case", lambda r: _dumps({"Prompt": "q", "answer": "1"}), "missing field 'prompt'"),
    (
        "prompt type",
        lambda r: _dumps(_with(r, prompt=r.choice([5, 1.5, ["q"], None, True, False, {"t": "q"}]))),
        "field 'prompt' must be str",
    ),
    (
        "answer type",
        lambda r: _dumps(_with(r, answer=r.choice([[1], None, True, {"v": 1}]))),
        "field 'answer' must be str/int/float",
    ),
    ("id type", lambda r: _dumps(_with(r, id=r.choice([[1], {"a": 1}, True, 1.5]))), "field 'id' must be str/int"),
    (
        "empty prompt",
        lambda r: _dumps(_with(r, prompt=r.choice(["", " ", "\n\t", "\u3000"]))),
        "field 'prompt' is empty",
    ),
    ("empty answer", lambda r: _dumps(_with(r, answer=r.choice(["", "  "]))), "field 'answer' is empty"),
    (
        "non-finite answer",
        lambda r: r.choice(
            [
                b'{"prompt": "q", "answer": NaN}',
                b'{"prompt": "q", "answer": 1e999}',
                b'{"prompt": "q", "answer": -Infinity}',
            ]
        ),
        "field 'answer' must be finite",
    ),
    (
        "lone surrogate",
        lambda r: r.choice([b'{"prompt": "a\\ud800b", "answer": "1"}', b'{"prompt": "q", "answer": "\\udfff"}']),
        "holds a lone surrogate",
    ),
    ("huge int", lambda r: b'{"prompt": "q", "answer": ' + b"7" * r.randint(4_400, 9_000) + b"}", "invalid JSON"),
    ("deep nesting", _deep, "invalid JSON"),
    ("non-UTF-8", _non_utf8, "not valid UTF-8"),
    ("BOM mid-file", lambda r: b"\xef\xbb\xbf" + _dumps(_good_row(r)), "invalid JSON"),
    ("NUL byte", _nul, "invalid JSON"),
    ("duplicate prompt", lambda r: _duplicate(r, "prompt"), "duplicate field 'prompt'"),
    ("duplicate answer", lambda r: _duplicate(r, "answer"), "duplicate field 'answer'"),
    ("huge bad line", _huge_bad, "missing field 'answer'"),
]


def fuzz_jsonl(seed: int = 0):
    """Lines of a fuzz file: (line bytes, expected) with expected ("good", row), ("bad", kind, fragment) or
    ("blank",). The first line is good (a BOM there would be legal); N_BAD_ROWS bad rows in all."""
    rng = random.Random(seed)
    first = {"prompt": "first", "answer": "1"}
    lines = [(_dumps(first), ("good", first))]
    for _ in range(N_BAD_ROWS):
        for _ in range(rng.choice([0, 0, 1, 1, 2])):
            line, row = _good_line(rng)
            lines.append((line, ("good", row)))
        if rng.random() < 0.1:
            lines.append((rng.choice([b"", b"   ", b"\r", b"\t "]), ("blank",)))
        kind, make, fragment = rng.choice(BAD_KINDS)
        lines.append((make(rng), ("bad", kind, fragment)))
    return lines


def _write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _expected_problem(row: dict) -> tuple:
    return row["prompt"], str(row["answer"]), None if row.get("id") is None else str(row["id"])


@pytest.fixture(scope="module")
def fuzz_lines():
    return fuzz_jsonl(seed=0)


def test_jsonl_fuzz_skip_bad_counts_exactly(tmp_path, fuzz_lines):
    path = _write_lines(tmp_path / "fuzz.jsonl", [line for line, _ in fuzz_lines])
    good = [exp[1] for _, exp in fuzz_lines if exp[0] == "good"]
    n_bad = sum(exp[0] == "bad" for _, exp in fuzz_lines)
    assert n_bad == N_BAD_ROWS
    kinds = {exp[1] for _, exp in fuzz_lines if exp[0] == "bad"}
    assert kinds == {k for k, _, _ in BAD_KINDS}  # every kind of damage is in the file

    problems, skipped = load_jsonl_problems(path, skip_bad=True)
    assert (len(problems), skipped) == (len(good), n_bad)
    for p, row in zip(problems, good, strict=True):
        prompt, answer, pid = _expected_problem(row)
        assert (p.prompt, p.answer) == (prompt, answer)
        assert pid is None and p.prompt_id.startswith("js-") or p.prompt_id == pid
    print(f"{len(fuzz_lines)} lines: {n_bad} bad rows skipped, {len(good)} good rows loaded")

    # Without skip_bad the run stops at the first bad row, named by its 1-based line number.
    first_bad = next(i for i, (_, exp) in enumerate(fuzz_lines, start=1) if exp[0] == "bad")
    with pytest.raises(DatasetError, match=f"fuzz.jsonl:{first_bad}: "):
        load_jsonl_problems(path, skip_bad=False)


def test_jsonl_fuzz_every_bad_row_is_a_clear_error(tmp_path, fuzz_lines):
    """Each bad row alone after a good row and a blank line: DatasetError naming path:3 and the field."""
    good = _dumps({"prompt": "ok", "answer": "1", "steps": ["a"], "labels": [1]})  # good for both readers
    checked = 0
    for i, (line, exp) in enumerate(fuzz_lines):
        if exp[0] != "bad":
            continue
        path = _write_lines(tmp_path / f"row{i}.jsonl", [good, b"", line])
        with pytest.raises(DatasetError) as err:
            load_jsonl_problems(path, skip_bad=False)
        message = str(err.value)
        assert message.startswith(f"{path}:3: "), (exp[1], message[:200])
        assert exp[2] in message, (exp[1], message[:200])
        assert len(message) < 400  # a 1 MB row is not echoed back
        # the step reader gives the same clear error (its rows share the line parser)
        with pytest.raises(DatasetError, match=f"row{i}.jsonl:3: "):
            read_step_jsonl(path, skip_bad=False)
        path.unlink()
        checked += 1
    assert checked == N_BAD_ROWS


def test_jsonl_bom_at_file_start_is_accepted(tmp_path):
    path = _write_lines(tmp_path / "bom.jsonl", [b"\xef\xbb\xbf" + _dumps({"prompt": "q", "answer": 1})])
    problems, skipped = load_jsonl_problems(path)
    assert (problems[0].prompt, problems[0].answer, skipped) == ("q", "1", 0)


# ============================================================== overlong prompts


def _cfg(tmp_path, train: Path, eval_: Path, skip: bool, max_model_len: int):
    return OmegaConf.merge(
        OmegaConf.structured(ExperimentConfig),
        {
            "seed": 0,
            "task": {"kind": "jsonl", "train_path": str(train), "eval_path": str(eval_), "skip_bad_rows": skip},
            "model": {"policy": BASE_POLICY, "trust_remote_code": False},
            "rollout": {"max_model_len": max_model_len},
        },
    )


def test_overlong_prompts_error_or_skip(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(BASE_POLICY)
    max_model_len = 64
    limit = max_model_len - 2  # longest prompt that leaves room to generate (see JsonlTask)
    rng = random.Random(1)
    # digits are single tokens with this tokenizer (Qwen2's split isolates them): n digits -> n tokens
    lengths = [rng.choice([1, limit - 1, limit, limit + 1, max_model_len, 5 * max_model_len]) for _ in range(200)]
    lengths[0] = 3  # line 1 fits
    prompts = ["".join(rng.choice("0123456789") for _ in range(n)) for n in lengths]
    assert [len(tok.encode(p)) for p in prompts] == lengths
    train = _write_lines(tmp_path / "train.jsonl", [_dumps({"prompt": p, "answer": "1"}) for p in prompts])
    eval_ = _write_lines(tmp_path / "eval.jsonl", [_dumps({"prompt": "1+1=", "answer": "2"})])

    n_over = sum(n > limit for n in lengths)
    assert n_over > 0
    task = task_from_config(_cfg(tmp_path, train, eval_, True, max_model_len))
    assert (len(task.train), task.train_skipped) == (len(lengths) - n_over, n_over)
    assert [p.prompt for p in task.train] == [p for p, n in zip(prompts, lengths, strict=True) if n <= limit]
    assert (len(task.eval), task.eval_skipped) == (1, 0)

    first = next(i for i, n in enumerate(lengths, start=1) if n > limit)
    with pytest.raises(DatasetError) as err:
        task_from_config(_cfg(tmp_path, train, eval_, False, max_model_len))
    message = str(err.value)
    assert message.startswith(f"{train}:{first}: field 'prompt' has {lengths[first - 1]} tokens")
    assert f"rollout.max_model_len={max_model_len}" in message
