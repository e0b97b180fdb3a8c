"""A fake world for the PRM lifecycle's glue (orchestrator/stepwise.py, labelling.py, searching.py).

The fake pool stands in for orchestrator.generators.GeneratorPool: `stream(requests, sampling)` yields
(ref, Trajectory) for every sample of every request, here in REVERSE order (a real pool yields in finishing
order), so the Expander must place each sample by its info["sample"]. A sample's text is given by a world
function of (request, sample index, sampling); it has one token per character.
"""

from __future__ import annotations

from algo.trajectory import PromptRequest, Trajectory
from orchestrator.stepwise import Expander, text_steps
from tasks.arithmetic import make_problem, solution_text

NL = "\n"


def trajectory(req: PromptRequest, sample: int, text: str, finish_reason: str = "stop") -> Trajectory:
    return Trajectory(
        uid=f"g{req.group_id}-{sample}",
        prompt_id=req.prompt_id,
        group_id=req.group_id,
        policy_version=0,
        prompt_ids=[],
        response_ids=list(range(len(text))),  # one token per character
        behavior_logprobs=[0.0] * len(text),
        finish_reason=finish_reason,
        step_spans=[],
        prompt_text=req.text,
        response_text=text,
        info={"sample": sample},
    )


class FakePool:
    def __init__(self, world):
        self.world = world  # (request, sample, sampling) -> text or (text, finish_reason)
        self.calls: list[tuple[list[PromptRequest], dict]] = []

    def stream(self, requests, sampling):
        self.calls.append((list(requests), dict(sampling)))
        out = []
        for req in requests:
            for i in range(sampling["n"]):
                got = self.world(req, i, sampling)
                text, reason = (got, "stop") if isinstance(got, str) else got
                out.append(trajectory(req, i, text, reason))
        for traj in reversed(out):
            yield object(), traj


def expander(pool, requests, *, seed=0, delimiter=NL, **kw) -> Expander:
    return Expander(pool, requests, delimiter, temperature=0.7, max_new_tokens=32, seed=seed, **kw)


P = make_problem([1, 5, 8, 4], ["+", "-", "+"])  # 1+5=6, 6-8=8 (mod 10), 8+4=2: the answer is 2
GOLD = text_steps(solution_text(P), NL)  # ("1+5=6 -8+4\n", "6-8=8 +4\n", "8+4=2\n", "A2\n")
WRONG = GOLD[:3] + ("A7\n",)  # right operations, wrong answer line
PARTIAL = GOLD[:2]  # unfinished (not done)
# Step 0 computes 1+5=7; the later steps compute correctly from it: step_correct [0, 1, 1, 1]
CORRUPTED = ("1+5=7 -8+4\n", "7-8=9 +4\n", "9+4=3\n", "A3\n")


class FakePrm:
    """A loaded PRM stand-in: the value of a step is 0.9 unless its text contains '7' (then 0.1)."""

    def __init__(self):
        self.items: list = []

    def score(self, items):
        self.items += items
        return [[0.1 if "7" in s else 0.9 for s in steps] for _, steps in items]
