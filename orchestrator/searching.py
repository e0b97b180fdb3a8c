"""Test-time search methods by name (`search.methods`), each bound to the pure core of algo/search.py.

A method takes the shared `SearchRun` and a budget N and returns one chosen solution per problem and the
tokens it generated per problem. The sampling methods (majority, bon_*, weighted) share one draw of max(N)
samples per problem and the PRM's scores of them: method@N uses the first N samples, and is charged their
tokens. The step-level methods (beam, mcts, reject) generate their own steps through a fresh Expander, so their
tokens are exactly what they spent. Budgets: beam@N has width N / search.expansions, mcts@N runs N
simulations, reject@N allows N proposals per step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from algo.search import (
    Node,
    beam_search,
    best_of_n,
    majority,
    mcts,
    rejection_search,
    sample_to_end,
    weighted_vote,
)
from orchestrator.stepwise import Expander, Judge, PrmScorer

Result = tuple[list[Node], list[float]]  # chosen solution per problem, tokens per problem


@dataclass
class SearchRun:
    roots: list[Node]
    judge: Judge
    scorer: PrmScorer
    make_expander: Callable[[float], Expander]  # a fresh expander at this temperature (it counts its tokens)
    temperature: float
    aggregation: str
    expansions: int
    mcts_children: int
    c_uct: float
    threshold: float
    max_depth: int
    max_budget: int
    _samples: list[list[Node]] | None = field(default=None, repr=False)
    _values: list[list[list[float]]] | None = field(default=None, repr=False)
    _tokens: dict[Node, int] = field(default_factory=dict, repr=False)

    def samples(self) -> tuple[list[list[Node]], list[list[list[float]]]]:
        """max_budget full samples per problem and the PRM's step values of each (drawn once)."""
        if self._samples is None:
            expander = self.make_expander(self.temperature)
            self._samples = sample_to_end(self.roots, self.max_budget, expander)
            self._tokens = expander.node_tokens
            flat = self.scorer([s for row in self._samples for s in row])
            self._values = [flat[i * self.max_budget : (i + 1) * self.max_budget] for i in range(len(self.roots))]
        assert self._values is not None
        return self._samples, self._values

    def first(self, n: int) -> tuple[list[list[Node]], list[list[list[float]]], list[float]]:
        """The first n samples per problem, their values, and their tokens per problem."""
        samples, values = self.samples()
        heads = [row[:n] for row in samples]
        return heads, [row[:n] for row in values], [float(sum(self._tokens[s] for s in row)) for row in heads]


def _greedy(run: SearchRun, n: int) -> Result:
    expander = run.make_expander(0.0)
    chosen = [row[0] for row in sample_to_end(run.roots, 1, expander)]
    return chosen, [float(t) for t in expander.tokens]


def _majority(run: SearchRun, n: int) -> Result:
    samples, _, tokens = run.first(n)
    return [majority(row, run.judge.answer) for row in samples], tokens


def _best_of(how: str) -> Callable[[SearchRun, int], Result]:
    def method(run: SearchRun, n: int) -> Result:
        samples, values, tokens = run.first(n)
        return [best_of_n(row, vals, how) for row, vals in zip(samples, values, strict=True)], tokens

    return method


def _weighted(run: SearchRun, n: int) -> Result:
    samples, values, tokens = run.first(n)
    chosen = [
        weighted_vote(row, vals, run.aggregation, run.judge.answer) for row, vals in zip(samples, values, strict=True)
    ]
    return chosen, tokens


def _step_level(run: SearchRun, search: Callable[..., list[Node]], **args: object) -> Result:
    """A step-level search with a fresh expander, charged exactly the tokens it generated."""
    expander = run.make_expander(run.temperature)
    chosen = search(run.roots, max_depth=run.max_depth, expand=expander, score=run.scorer, **args)
    return chosen, [float(t) for t in expander.tokens]


def _beam(run: SearchRun, n: int) -> Result:
    expansions = min(run.expansions, n)
    width = max(1, n // expansions)
    return _step_level(run, beam_search, width=width, expansions=expansions, how=run.aggregation)


def _mcts(run: SearchRun, n: int) -> Result:
    return _step_level(run, mcts, simulations=n, children=run.mcts_children, c_uct=run.c_uct, how=run.aggregation)


def _reject(run: SearchRun, n: int) -> Result:
    return _step_level(run, rejection_search, threshold=run.threshold, max_tries=n)


METHODS: dict[str, Callable[[SearchRun, int], Result]] = {
    "greedy": _greedy,
    "majority": _majority,
    "bon_product": _best_of("product"),
    "bon_min": _best_of("min"),
    "bon_last": _best_of("last"),
    "weighted": _weighted,
    "beam": _beam,
    "mcts": _mcts,
    "reject": _reject,
}


def budgets_of(method: str, budgets: list[int]) -> list[int]:
    """Greedy has one budget, 1; every other method runs at every N."""
    return [1] if method == "greedy" else sorted(set(budgets))
