"""The oracle relabelling that judges PRMs (orchestrator/prm_command.py), without Ray or models."""

from orchestrator.prm_command import _oracle_truth, relabel
from tasks.arithmetic import make_problem, prompt_text
from tasks.datasets import StepExample


def test_relabel_uses_the_task_modulus():
    # 3+5 = 8 = 1 (mod 7): both steps are right mod 7, while mod 10 the first would be wrong.
    q = make_problem([3, 5], ["+"], modulus=7)
    ex = StepExample(prompt_text(q), ["3+5=1", "A1"], [0.0, 0.0])
    assert relabel([ex], "step_correct", 7)[0].labels == [1.0, 1.0]
    assert _oracle_truth([ex], 7, "\n")["step_correct"] == [[1.0, 1.0]]


def test_relabel_gives_each_meaning():
    # 1+5-8: gold 1+5=6 -8, 6-8=8, A8. The policy wrote 1+5=7 -8 (wrong), then 7-8=9 (right given the 7:
    # step_correct, but built on the error: neither prefix_correct nor strict_step), then A9 (wrong answer).
    q = make_problem([1, 5, 8], ["+", "-"])
    ex = StepExample(prompt_text(q), ["1+5=7 -8", "7-8=9", "A9"], [0.0, 0.0, 0.0])
    truth = _oracle_truth([ex], 10, "\n")
    assert truth["step_correct"] == [[0.0, 1.0, 1.0]]
    assert truth["prefix_correct"] == [[0.0, 0.0, 0.0]]
    assert truth["strict_step"] == [[0.0, 0.0, 0.0]]
