"""Search methods bound by name (orchestrator/searching.py) on a fake world (stepwise_world.py), and the
search command's summary curves."""

from __future__ import annotations

import pytest
from stepwise_world import NL, FakePool, FakePrm, P

from algo.search import Node
from algo.trajectory import PromptRequest
from orchestrator.config import LABEL_KINDS, SEARCH_METHODS
from orchestrator.labelling import KINDS
from orchestrator.search_command import _curves, plot_search
from orchestrator.searching import METHODS, SearchRun, budgets_of
from orchestrator.stepwise import Expander, Judge, PrmScorer, arithmetic_final, text_steps
from tasks.arithmetic import make_problem, prompt_text, solution_text

# ---------------------------------------------------------------- names, budgets, summaries


def test_every_config_name_is_bound():
    assert sorted(KINDS) == sorted(LABEL_KINDS) and len(KINDS) == len(LABEL_KINDS)
    assert tuple(METHODS) == SEARCH_METHODS


def test_budgets_of():
    assert budgets_of("greedy", [16, 4, 1]) == [1]
    assert budgets_of("greedy", [4]) == [1]  # greedy runs at 1 even when 1 is not a budget
    for method in SEARCH_METHODS[1:]:
        assert budgets_of(method, [16, 4, 4, 1]) == [1, 4, 16]


def test_curves_of_a_summary(tmp_path):
    summary = {
        "search/problems": 4,
        "search/prm": "/runs/x@y/prm",  # a value may hold "@": only keys are parsed
        "search/greedy@1": 0.5,
        "search/greedy@1/tokens": 10.0,
        "search/beam@4": 0.75,
        "search/beam@4/tokens": 160.0,
        "search/beam@1": 0.25,
        "search/beam@1/tokens": 40.0,
        "time_s": 3.0,
    }
    assert _curves(summary) == {"greedy": [(1, 0.5, 10.0)], "beam": [(1, 0.25, 40.0), (4, 0.75, 160.0)]}
    path = plot_search(summary, str(tmp_path / "search.png"))
    assert path == str(tmp_path / "search.png") and (tmp_path / "search.png").stat().st_size > 0


# ---------------------------------------------------------------- every method on a fake world

# Two problems; the policy writes the gold solution step by step, except that sample 1 of a full
# solution from the root ends with a wrong answer line. The PRM scores 0.9 a step without a '7', 0.1 with.
PROBLEMS = [P, make_problem([2, 3], ["+"])]  # 2+3=5: "2+3=5\n", "A5\n"
GOLDS = [text_steps(solution_text(p), NL) for p in PROBLEMS]


def policy(req, i, sampling):
    g = next(k for k, p in enumerate(PROBLEMS) if p.prompt_id == req.prompt_id)
    k = len(text_steps(req.prefix, NL))
    if sampling["stop"]:
        return GOLDS[g][k]
    rest = "".join(GOLDS[g][k:])
    return rest[: -len("A2\n")] + "A7\n" if i == 1 and k == 0 else rest


def search_run(pool) -> SearchRun:
    requests = [PromptRequest(p.prompt_id, i, prompt_text(p), p.answer) for i, p in enumerate(PROBLEMS)]
    return SearchRun(
        roots=[Node(i, (), False) for i in range(len(PROBLEMS))],
        judge=Judge(PROBLEMS),
        scorer=PrmScorer(FakePrm(), [prompt_text(p) for p in PROBLEMS], NL),
        make_expander=lambda t: Expander(pool, requests, NL, t, 32, 0, is_final=arithmetic_final),
        temperature=1.0,
        aggregation="min",
        expansions=2,
        mcts_children=2,
        c_uct=1.0,
        threshold=0.5,
        max_depth=12,
        max_budget=3,
    )


@pytest.mark.parametrize("method", SEARCH_METHODS)
def test_every_method_runs_on_a_fake_world(method):
    pool = FakePool(policy)
    run = search_run(pool)
    for n in budgets_of(method, [1, 3]):
        chosen, tokens = METHODS[method](run, n)
        assert [c.problem for c in chosen] == [0, 1] and all(c.done for c in chosen)
        assert len(tokens) == 2 and all(t > 0 for t in tokens)
        if method != "majority" or n > 1:  # majority@1 of a sample may be the wrong one (it is not here)
            assert all(run.judge.correct(c) for c in chosen), (method, n, chosen)
    if method == "greedy":
        assert [s["temperature"] for _, s in pool.calls] == [0.0]


def test_sampling_methods_share_one_draw_and_charge_the_first_n():
    pool = FakePool(policy)
    run = search_run(pool)
    chosen1, tok1 = METHODS["majority"](run, 1)
    chosen3, tok3 = METHODS["bon_min"](run, 3)
    METHODS["weighted"](run, 2)
    assert len(pool.calls) == 1 and pool.calls[0][1]["n"] == 3  # max_budget samples, drawn once
    # every sample (the wrong-answer one too) has as many characters, i.e. tokens, as the gold text
    gold = [len(solution_text(p)) for p in PROBLEMS]
    assert tok1 == gold and tok3 == [3 * g for g in gold]
    # sample 1 ends in "A7" (PRM 0.1): best-of-3 by the min step value passes it over
    assert [c.steps for c in chosen3] == GOLDS == [c.steps for c in chosen1]
