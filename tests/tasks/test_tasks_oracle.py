"""Oracle labels: the step meanings and the outcome on hand-made responses, and no exception on thousands of
bad ones."""

import dataclasses
import random

from tasks.arithmetic import ArithmeticTask, make_problem, problem_from_prompt, solution_text
from tasks.oracle import STEP_MEANINGS, Labels, label_response, split_lines

P = problem_from_prompt("1+5-8+4=")  # gold: 1+5=6 -8+4 / 6-8=8 +4 / 8+4=2 / A2


def test_gold_response():
    lab = label_response(P, "1+5=6 -8+4\n6-8=8 +4\n8+4=2\nA2\n")
    assert lab.step_correct == [True, True, True, True]
    assert lab.prefix_correct == [True, True, True, True]
    assert lab.strict_step == [True, True, True, True]
    assert lab.outcome and lab.format_ok and not lab.truncated
    assert lab.num_steps == 4 and lab.first_error is None and lab.answer == "2" and lab.reason == ""


def test_step_built_on_a_wrong_result_can_be_right():
    # Step 1 slips (1+5=7). Steps 2-4 are right given the 7: 7-8=-1=9, 9+4=13=3, A3.
    lab = label_response(P, "1+5=7 -8+4\n7-8=9 +4\n9+4=3\nA3\n")
    assert lab.step_correct == [False, True, True, True]
    assert lab.prefix_correct == [False, False, False, False]
    assert lab.strict_step == [False, False, False, False]  # each builds on the wrong 7
    assert not lab.outcome and lab.format_ok and lab.first_error == 0


def test_step_that_ignores_the_previous_result_is_wrong():
    # Step 2 silently uses the gold 6 instead of the 7 written above: wrong; the answer is still right.
    lab = label_response(P, "1+5=7 -8+4\n6-8=8 +4\n8+4=2\nA2\n")
    assert lab.step_correct == [False, False, True, True]
    assert lab.strict_step == [False, True, True, True]  # the repair uses the true 6: strict from there on
    assert lab.outcome and lab.first_error == 0


def test_wrong_middle_step():
    # 6-8 = 8 (mod 10), written 9: step 2 wrong; 9+4=13=3 right given the 9; A3 right given it.
    lab = label_response(P, "1+5=6 -8+4\n6-8=9 +4\n9+4=3\nA3\n")
    assert lab.step_correct == [True, False, True, True]
    assert lab.prefix_correct == [True, False, False, False]
    assert lab.strict_step == [True, False, False, False]
    assert lab.first_error == 1 and not lab.outcome


def test_dropped_operand_is_wrong_then_followed_consistently():
    # Step 1 drops "-8" from the rest: wrong. Step 2 uses what step 1 wrote: right. One op step missing.
    lab = label_response(P, "1+5=6 +4\n6+4=0\nA0\n")
    assert lab.step_correct == [False, True, True]
    # Step 2 is judged against the true 6 with "-8+4" left: it applies +4, so it is not strict; the
    # answer comes with "+4" still left in the true chain.
    assert lab.strict_step == [False, False, False]
    assert not lab.format_ok and "operation steps" in lab.reason
    assert not lab.outcome


def test_answer_only_is_an_outcome_without_process():
    lab = label_response(P, "A2\n")
    assert lab.step_correct == [False] and lab.strict_step == [False] and lab.outcome and not lab.format_ok


def test_truncated_and_missing_answer():
    lab = label_response(P, "1+5=6 -8+4\n6-8=8 +4\n8+4=2\nA2")  # no final "\n": truncated
    assert lab.truncated and lab.step_correct == [True, True, True, False]
    assert lab.strict_step == [True, True, True, False]
    assert not lab.outcome and not lab.format_ok and "truncated" in lab.reason
    lab = label_response(P, "1+5=6 -8+4\n6-8=8 +4\n")  # stopped early, all steps right
    assert lab.step_correct == [True, True] and lab.first_error == 2  # the first missing step
    assert lab.strict_step == [True, True]
    assert not lab.outcome and lab.reason == "no answer line"


def test_extra_step_after_answer_and_garbage():
    lab = label_response(P, "1+5=6 -8+4\n6-8=8 +4\n8+4=2\nA2\nA2\n")
    assert lab.step_correct == [True, True, True, True, False] and not lab.format_ok
    assert lab.strict_step == [True, True, True, True, False]
    lab = label_response(P, "hello\n1+5=6 -8+4\n6-8=8 +4\n8+4=2\nA2\n")
    assert lab.step_correct == [False, True, True, True, True]  # garbage leaves the state unchanged
    assert lab.strict_step == [False, True, True, True, True]  # the true state too
    assert lab.outcome and not lab.format_ok and "unparseable" in lab.reason
    lab = label_response(P, "")
    assert lab.num_steps == 0 and lab.step_correct == [] and not lab.outcome and lab.first_error == 0
    assert lab.strict_step == []


# ------------------------------------------------------------------------------------------ strict_step --
def test_strict_step_is_a_step_meaning_and_a_label_field():
    per_step = {f.name for f in dataclasses.fields(Labels) if f.type == "list[bool]"}
    assert set(STEP_MEANINGS) == per_step == {"step_correct", "prefix_correct", "strict_step"}
    assert "strict_step" in label_response(P, solution_text(P)).to_dict()


def test_a_trivially_right_step_after_an_error_is_never_strict():
    # 1+5-0+4 mod 10, gold: 1+5=6 -0+4 / 6-0=6 +4 / 6+4=0 / A0. After the slip 1+5=7, "7-0=7" is right
    # on the 7 it uses, but the true value is 6: not strict, and neither is anything after it.
    q = make_problem([1, 5, 0, 4], ["+", "-", "+"])
    lab = label_response(q, "1+5=7 -0+4\n7-0=7 +4\n7+4=1\nA1\n")
    assert lab.step_correct == [False, True, True, True]
    assert lab.strict_step == [False, False, False, False]
    assert lab.first_error == 0 and not lab.outcome


def test_a_repair_of_a_dropped_operand_is_strict():
    # Step 1 forgets "+4" in the rest (wrong both ways); step 2 is right on what step 1 wrote but not
    # against the true rest "+4"; step 3 brings "+4" back: wrong on the (empty) rest it uses, but it is
    # the true third step. The answer states the true value with every true operation done.
    lab = label_response(P, "1+5=6 -8\n6-8=8\n8+4=2\nA2\n")
    assert lab.step_correct == [False, True, False, True]
    assert lab.strict_step == [False, False, True, True]
    assert lab.first_error == 0 and lab.outcome and lab.format_ok


def test_strict_lines_are_judged_at_their_gold_position():
    # A repeated line shifts the lines after it: the k-th operation line is compared with the true state
    # after k-1 operations. The answer is strict again: all (three) true operations are "done" and 2 is
    # the true final value.
    lab = label_response(P, "1+5=6 -8+4\n1+5=6 -8+4\n6-8=8 +4\n8+4=2\nA2\n")
    assert lab.step_correct == [True, False, True, True, True]
    assert lab.strict_step == [True, False, False, False, True]


def test_gold_solutions_are_strict_everywhere():
    tasks = [ArithmeticTask(seed=3), ArithmeticTask(1, 6, modulus=100, operand_max=150, operators="+-*", seed=3)]
    for task in tasks:
        for problem in task.sample(200):
            lab = label_response(problem, solution_text(problem))
            assert all(lab.strict_step) and all(lab.prefix_correct) and lab.outcome


def test_split_steps_matches_line_segmentation():
    assert split_lines("a\nb\n") == (["a", "b"], False)
    assert split_lines("a\nb") == (["a", "b"], True)
    assert split_lines("\n\n") == (["", ""], False)
    assert split_lines("") == ([], False)


def _mutate(text: str, rng: random.Random) -> str:
    alphabet = "0123456789+-*= A\nx"
    kind = rng.randrange(6)
    if kind == 0 and text:  # substitute a character
        i = rng.randrange(len(text))
        return text[:i] + rng.choice(alphabet) + text[i + 1 :]
    if kind == 1:  # insert a character
        i = rng.randrange(len(text) + 1)
        return text[:i] + rng.choice(alphabet) + text[i:]
    if kind == 2 and text:  # delete a character
        i = rng.randrange(len(text))
        return text[:i] + text[i + 1 :]
    if kind == 3:  # truncate anywhere
        return text[: rng.randrange(len(text) + 1)]
    lines = text.split("\n")
    i = rng.randrange(len(lines))
    if kind == 4:  # drop a line
        return "\n".join(lines[:i] + lines[i + 1 :])
    return "\n".join(lines[: i + 1] + lines[i:])  # duplicate a line


def _check_invariants(problem, text):
    lab = label_response(problem, text)
    assert lab.num_steps == len(lab.step_correct) == len(lab.prefix_correct) == len(lab.strict_step)
    running = True
    for c, pc, st in zip(lab.step_correct, lab.prefix_correct, lab.strict_step, strict=True):
        running = running and c
        assert pc == running
        # Right steps on the values used, all the way, means those values are the true ones. The converse
        # fails both ways (a repair is strict, a step built on an error is step_correct).
        assert st or not pc
    if lab.truncated:
        assert not lab.strict_step[-1]
    if lab.strict_step and all(lab.strict_step) and lab.answer is not None:  # the answer line is strict
        assert lab.outcome
    if lab.format_ok:
        assert lab.num_steps == problem.num_ops + 1 and not lab.truncated and lab.answer is not None
    if lab.format_ok and all(lab.step_correct):  # right steps in the right shape give the right answer
        assert lab.outcome and lab.first_error is None
    if lab.outcome:
        assert lab.answer is not None and int(lab.answer) == int(problem.answer)
    if lab.first_error is not None:
        assert 0 <= lab.first_error <= lab.num_steps
        assert all(lab.step_correct[: lab.first_error])
    return lab


def test_thousands_of_random_and_mutated_responses_never_raise():
    rng = random.Random(1234)
    tasks = [ArithmeticTask(seed=5), ArithmeticTask(1, 6, modulus=100, operators="+-*", seed=5)]
    outcomes = 0
    for i in range(3000):
        problem = tasks[i % 2].sample(1)[0]
        if i % 3 == 0:  # random garbage over the task alphabet and beyond
            text = "".join(rng.choice("0123456789+-*= A\n\t\u00e9x") for _ in range(rng.randrange(60)))
            if i % 9 == 0:
                text += "9" * rng.randrange(30)  # digit runs too long to be numbers
        else:
            text = solution_text(problem)
            for _ in range(rng.randrange(1, 4)):
                text = _mutate(text, rng)
        outcomes += _check_invariants(problem, text).outcome
    assert 0 < outcomes < 3000  # the mutations both keep and break answers
