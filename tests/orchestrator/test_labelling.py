"""The label kinds of orchestrator/labelling.py worked by hand in a fake world (stepwise_world.py), the
comparison with the oracle, and the corrupt kind."""

from __future__ import annotations

import random

import pytest
from stepwise_world import CORRUPTED, GOLD, NL, PARTIAL, WRONG, FakePool, P, expander

from algo.search import Node
from algo.trajectory import PromptRequest
from orchestrator.labelling import KINDS, LabelJob, compare_with_oracle, examples, oracle_values
from orchestrator.stepwise import Judge, text_steps
from tasks.arithmetic import ArithmeticTask, prompt_text, solution_text
from tasks.corrupt import corrupt_solution
from tasks.oracle import STEP_MEANINGS

# ---------------------------------------------------------------- label kinds in a fake world
#
# Completions from a prefix depend only on the prefix's number of steps k: of K = 4 completions, the first
# CORRECT[k] end with the right answer line "A2" (the oracle's outcome reads only the last line), the rest
# with "A7". So the Monte-Carlo value of a k-step prefix is CORRECT[k] / 4: 0.75, 0.25, 0.0 for k = 1, 2, 3.
K = 4
CORRECT = {1: 3, 2: 1, 3: 0}
SOLUTIONS = [Node(0, GOLD, True), Node(0, WRONG, True), Node(0, PARTIAL, False), Node(0, CORRUPTED, True)]


def world(correct: dict[int, int]):
    def complete(req, i, sampling):
        assert sampling["stop"] is None  # Monte-Carlo completions run to the end
        k = len(text_steps(req.prefix, NL))
        return "A2\n" if i < correct[k] else "A7\n"

    return complete


def label_job(pool, *, prover_pool=None, meaning="step_correct", prover_k=2, solutions=SOLUTIONS, **kw) -> LabelJob:
    problems = kw.pop("problems", [P])
    policy = expander(pool, [PromptRequest(p.prompt_id, i, prompt_text(p), p.answer) for i, p in enumerate(problems)])
    prover = expander(prover_pool, policy.requests) if prover_pool else policy
    return LabelJob(
        problems=problems,
        questions=[prompt_text(p) for p in problems],
        solutions=solutions,
        expander=policy,
        prover_expander=lambda: prover,
        judge=Judge(problems),
        meaning=meaning,
        rollouts=K,
        prover_k=prover_k,
        samples_per_problem=kw.pop("samples_per_problem", 2),
        delimiter=NL,
        seed=kw.pop("seed", 0),
    )


# A done solution's last prefix is the solution itself: not rolled out, its value is its own correctness.
#   GOLD      (done, 4 steps): prefixes k=1,2,3 -> 0.75, 0.25, 0.0; last step: correct -> 1.0
#   WRONG     (done, 4 steps): 0.75, 0.25, 0.0; last step "A7": wrong -> 0.0
#   PARTIAL   (not done, 2 steps): both prefixes rolled out -> 0.75, 0.25
#   CORRUPTED (done, 4 steps): 0.75, 0.25, 0.0; last step "A3": wrong -> 0.0
MC_SOFT = [[0.75, 0.25, 0.0, 1.0], [0.75, 0.25, 0.0, 0.0], [0.75, 0.25], [0.75, 0.25, 0.0, 0.0]]
# hard = any completion correct = (value > 0)
MC_HARD = [[1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0], [1.0, 1.0], [1.0, 1.0, 0.0, 0.0]]
# prover, best-of-K=2 of the policy: 1 - (1 - p)^2: 0.75 -> 1 - 0.0625 = 0.9375, 0.25 -> 1 - 0.5625 = 0.4375,
# 0 -> 0, 1 -> 1
PROVER = [[0.9375, 0.4375, 0.0, 1.0], [0.9375, 0.4375, 0.0, 0.0], [0.9375, 0.4375], [0.9375, 0.4375, 0.0, 0.0]]
# rollouts: (3 + 3 + 2 + 3) prefixes x K = 11 x 4 = 44, over 4 + 4 + 2 + 4 = 14 labelled steps
ROLLOUTS, STEPS = 44, 14


def test_mc_kinds_by_hand_share_one_set_of_rollouts():
    pool = FakePool(world(CORRECT))
    job = label_job(pool)
    soft, hard, prover = KINDS["mc_soft"](job), KINDS["mc_hard"](job), KINDS["prover"](job)
    assert soft.values == MC_SOFT
    assert hard.values == MC_HARD
    assert prover.values == PROVER  # exact: every value here is a short binary fraction
    assert soft.solutions == hard.solutions == prover.solutions == SOLUTIONS
    # one batched generation call for all prefixes, shared by the three kinds (the prover is the policy)
    assert len(pool.calls) == 1 and len(pool.calls[0][0]) == 11 and pool.calls[0][1]["n"] == K
    assert job.expander.rollouts == ROLLOUTS
    assert soft.cost["rollouts"] == hard.cost["rollouts"] == prover.cost["rollouts"] == ROLLOUTS
    out = compare_with_oracle(job, "mc_soft", soft, STEP_MEANINGS)
    assert out["label/mc_soft/steps"] == STEPS
    assert out["label/mc_soft/rollouts_per_step"] == pytest.approx(ROLLOUTS / STEPS)
    # (0.75 + 0.25 + 0 + 1) + (0.75 + 0.25 + 0 + 0) + (0.75 + 0.25) + (0.75 + 0.25 + 0 + 0) = 5 over 14 steps
    assert out["label/mc_soft/mean_label"] == pytest.approx(5 / 14)


def test_prover_of_another_policy_rolls_out_on_its_own():
    # the prover's world: 4, 2, 2 of 4 completions right from 1, 2, 3 steps: p = 1.0, 0.5, 0.5, and its
    # best-of-2 value 1 - (1 - p)^2 = 1.0, 0.75, 0.75
    prover_pool, pool = FakePool(world({1: 4, 2: 2, 3: 2})), FakePool(world(CORRECT))
    job = label_job(pool, prover_pool=prover_pool, prover_k=2)
    labelled = KINDS["prover"](job)
    assert labelled.values == [[1.0, 0.75, 0.75, 1.0], [1.0, 0.75, 0.75, 0.0], [1.0, 0.75], [1.0, 0.75, 0.75, 0.0]]
    assert pool.calls == [] and len(prover_pool.calls) == 1  # the policy spent nothing
    assert labelled.cost["rollouts"] == ROLLOUTS
    # prover_k = 1: the prover's own success rate
    assert KINDS["prover"](label_job(pool, prover_pool=prover_pool, prover_k=1)).values[0] == [1.0, 0.5, 0.5, 1.0]


# The oracle's labels of the four solutions in every meaning (each meaning has both classes here):
#   GOLD      all right
#   WRONG     the answer line is wrong in every meaning: [1, 1, 1, 0]
#   PARTIAL   both steps right: [1, 1]
#   CORRUPTED step_correct [0, 1, 1, 1]; prefix_correct and strict_step [0, 0, 0, 0]
ORACLE = {
    "step_correct": [[1.0] * 4, [1.0, 1.0, 1.0, 0.0], [1.0, 1.0], [0.0, 1.0, 1.0, 1.0]],
    "prefix_correct": [[1.0] * 4, [1.0, 1.0, 1.0, 0.0], [1.0, 1.0], [0.0] * 4],
    "strict_step": [[1.0] * 4, [1.0, 1.0, 1.0, 0.0], [1.0, 1.0], [0.0] * 4],
}


@pytest.mark.parametrize("meaning", STEP_MEANINGS)
def test_oracle_kind_agrees_with_itself(meaning):
    pool = FakePool(world(CORRECT))
    job = label_job(pool, meaning=meaning)
    labelled = KINDS["oracle"](job)
    assert labelled.values == ORACLE[meaning] == oracle_values([P], SOLUTIONS, meaning)
    out = compare_with_oracle(job, "oracle", labelled, STEP_MEANINGS)
    assert out[f"label/oracle/auc_{meaning}"] == 1.0
    # the first error of every meaning is step_correct's on these four solutions: none, 3, none, 0
    # (prefix_correct's always is; strict_step's is not in general, e.g. after a skipped operation)
    assert out["label/oracle/first_error_agreement"] == 1.0
    assert out["label/oracle/steps"] == STEPS and out["label/oracle/rollouts_per_step"] == 0.0
    assert pool.calls == []  # the oracle spends no rollouts
    # against another meaning it is not perfect: CORRUPTED's steps 1-3 are right under step_correct only
    if meaning == "step_correct":
        assert out["label/oracle/auc_prefix_correct"] < 1.0


def test_mc_labels_compared_with_the_oracle_by_hand():
    job = label_job(FakePool(world(CORRECT)))
    out = compare_with_oracle(job, "mc_hard", KINDS["mc_hard"](job), ("step_correct",))
    # MC_HARD against ORACLE["step_correct"], step by step:
    #   negatives (wrong steps): WRONG[3] labelled 0, CORRUPTED[0] labelled 1;
    #   positives (12): labelled 0 are GOLD[2], WRONG[2], CORRUPTED[2], CORRUPTED[3] (4), the other 8 labelled 1.
    # AUC = (wins + ties / 2) / (12 x 2): against WRONG[3] 8 wins and 4 ties, against CORRUPTED[0] 8 ties
    #     = (8 + 4 / 2 + 8 / 2) / 24 = 14 / 24
    assert out["label/mc_hard/auc_step_correct"] == pytest.approx(14 / 24)
    # first label < 0.5 against the oracle's first wrong step: GOLD 2 vs none, WRONG 2 vs 3, PARTIAL none vs
    # none, CORRUPTED 2 vs 0: one agreement in four
    assert out["label/mc_hard/first_error_agreement"] == 0.25


def test_corrupt_kind_half_corrupted_first_error_at_the_corrupted_step():
    problems = ArithmeticTask(min_steps=2, max_steps=5, seed=0).sample(6, "train", seed=11)
    job = label_job(FakePool(world(CORRECT)), problems=problems, samples_per_problem=4, seed=3, solutions=[])
    labelled = KINDS["corrupt"](job)
    assert len(labelled.solutions) == 6 * 4 and labelled.cost["rollouts"] == 0
    rng = random.Random(3)  # the kind's draws, in its order: the even samples of each problem are corrupted
    for k, (node, values) in enumerate(zip(labelled.solutions, labelled.values, strict=True)):
        problem, s = problems[k // 4], k % 4
        assert node.problem == k // 4 and node.done
        if s % 2 == 0:
            corrupted = corrupt_solution(problem, rng)
            assert "".join(node.steps) == corrupted.text
            # step_correct: only the corrupted step is wrong (the later ones compute right from it)
            assert values == [float(j != corrupted.step) for j in range(len(node.steps))]
            assert not Judge(problems).correct(node)
        else:
            assert "".join(node.steps) == solution_text(problem)
            assert values == [1.0] * len(node.steps)
            assert Judge(problems).correct(node)
    rows = examples(job, labelled)
    assert len(rows) == 24
    assert rows[1].prompt == prompt_text(problems[0])
    assert rows[1].steps == solution_text(problems[0]).split(NL)[:-1]  # without the delimiter
    assert rows[1].labels == labelled.values[1]


def test_examples_skip_solutions_without_steps():
    job = label_job(FakePool(world(CORRECT)), solutions=[Node(0, (), True), Node(0, GOLD, True)])
    labelled = KINDS["oracle"](job)
    [row] = examples(job, labelled)
    assert (row.prompt, row.steps, row.labels) == (prompt_text(P), ["1+5=6 -8+4", "6-8=8 +4", "8+4=2", "A2"], [1.0] * 4)
