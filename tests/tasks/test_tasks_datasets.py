"""JSONL problems and step-labelled data: good files, bad rows named by file/line/field, skip counts."""

import json

import pytest

from tasks.datasets import (
    DatasetError,
    StepExample,
    TextProblem,
    check_answer,
    load_jsonl_problems,
    read_step_jsonl,
    write_step_jsonl,
)


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_good_problem_file(tmp_path):
    f = _write(
        tmp_path / "gsm.jsonl",
        [
            json.dumps({"prompt": "Tom has 3 apples and buys 4. How many?", "answer": "7"}),
            "",  # blank lines are not rows
            json.dumps({"prompt": "Half of 1?", "answer": 0.5, "id": 12}),
        ],
    )
    problems, skipped = load_jsonl_problems(f, skip_bad=False)
    assert skipped == 0
    assert problems[0].prompt.startswith("Tom") and problems[0].answer == "7"
    assert problems[0].prompt_id.startswith("js-")
    assert problems[1] == TextProblem("12", "Half of 1?", "0.5")


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "q"}', ":2: missing field 'answer'"),
        ('{"prompt": 5, "answer": "1"}', ":2: field 'prompt' must be str"),
        ('{"prompt": "q", "answer": true}', ":2: field 'answer' must be"),
        ('{"prompt": "  ", "answer": "1"}', ":2: field 'prompt' is empty"),
        ('{"prompt": "q", "answer": ""}', ":2: field 'answer' is empty"),
        ('{"prompt": "q", "answer": "1"', ":2: invalid JSON"),
        ('["q", "1"]', ":2: row must be a JSON object"),
    ],
)
def test_bad_problem_row_names_file_line_and_field(tmp_path, line, message):
    f = _write(tmp_path / "bad.jsonl", [json.dumps({"prompt": "ok", "answer": "1"}), line])
    with pytest.raises(DatasetError, match=message) as err:
        load_jsonl_problems(f, skip_bad=False)
    assert "bad.jsonl" in str(err.value)
    problems, skipped = load_jsonl_problems(f, skip_bad=True)
    assert (len(problems), skipped) == (1, 1)


def test_problem_remembers_its_file_and_line(tmp_path):
    f = _write(tmp_path / "src.jsonl", ["", json.dumps({"prompt": "q", "answer": "1"})])
    problems, _ = load_jsonl_problems(f)
    assert problems[0].source == f"{f}:2"
    assert problems[0] == TextProblem(problems[0].prompt_id, "q", "1")  # source is not part of equality


def test_non_utf8_line_is_a_bad_row_not_a_crash(tmp_path):
    f = tmp_path / "latin1.jsonl"
    f.write_bytes(b'{"prompt": "ok", "answer": "1"}\n{"prompt": "caf\xe9", "answer": "1"}\n')
    with pytest.raises(DatasetError, match=r"latin1.jsonl:2: line is not valid UTF-8 \(byte 0xe9 at column 16\)"):
        load_jsonl_problems(f)
    problems, skipped = load_jsonl_problems(f, skip_bad=True)
    assert (len(problems), skipped) == (1, 1)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_jsonl_problems(tmp_path / "nope.jsonl", skip_bad=True)


def test_step_data_round_trip(tmp_path):
    examples = [
        StepExample("1+2=\n", ["1+2=3", "A3"], [1.0, 1.0]),
        StepExample("Q: what?\n", ["step one", "step two", "so 4"], [1, -1, 0.25]),
    ]
    path = tmp_path / "sub" / "steps.jsonl"
    write_step_jsonl(path, examples)
    back, skipped = read_step_jsonl(path)
    assert skipped == 0
    assert back == [StepExample(e.prompt, e.steps, [float(x) for x in e.labels]) for e in examples]


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "q", "steps": ["a", "b"], "labels": [1]}, "field 'labels' has 1 entries, 'steps' has 2"),
        ({"prompt": "q", "steps": [], "labels": []}, "field 'steps' is empty"),
        ({"prompt": "q", "steps": ["a", 3], "labels": [1, 1]}, r"field 'steps\[1\]' must be str"),
        ({"prompt": "q", "steps": ["a"], "labels": ["good"]}, r"field 'labels\[0\]' must be a number"),
        ({"prompt": "q", "steps": "a", "labels": [1]}, "field 'steps' must be list"),
        ({"steps": ["a"], "labels": [1]}, "missing field 'prompt'"),
        ({"prompt": "q", "steps": ["a"], "labels": [float("nan")]}, r"field 'labels\[0\]' must be a finite number"),
        ({"prompt": "q", "steps": ["a"], "labels": [10**400]}, r"field 'labels\[0\]' must be a finite number"),
        ({"prompt": "q", "steps": ["a\ud800"], "labels": [1]}, r"field 'steps\[0\]' holds a lone surrogate"),
    ],
)
def test_bad_step_rows(tmp_path, row, message):
    f = _write(tmp_path / "s.jsonl", [json.dumps(row), json.dumps({"prompt": "q", "steps": ["a"], "labels": [0]})])
    with pytest.raises(DatasetError, match="s.jsonl:1: " + message):
        read_step_jsonl(f)
    examples, skipped = read_step_jsonl(f, skip_bad=True)
    assert (len(examples), skipped) == (1, 1)
    with pytest.raises(DatasetError, match="write_step_jsonl item 0"):
        write_step_jsonl(tmp_path / "w.jsonl", [StepExample(row.get("prompt", ""), ["a", "b"], [1])])


@pytest.mark.parametrize(
    "pred, gold, ok",
    [
        ("so the answer is \\boxed{72}", "72", True),
        ("#### 18", "18", True),
        ("\\boxed{\\frac{1}{2}}", "0.5", True),
        ("\\boxed{x^2+2x}", "x(x+2)", True),
        ("the answer is 71", "72", False),
        ("no number here", "72", False),
        ("", "72", False),
    ],
)
def test_check_answer(pred, gold, ok):
    assert check_answer(pred, gold) is ok
