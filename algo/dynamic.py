"""Which groups of a scored batch carry signal for a group-relative estimator.

Dynamic sampling (DAPO, Yu et al. 2503.14476, section 3.2 "dynamic sampling"): a group whose samples all
received the same reward gets zero advantage from GRPO-style estimators (every sample equals the group
baseline), so it spends compute and dilutes the batch without moving the policy. Such groups are dropped and
replaced by fresh prompts (orchestrator/dynamic.py); this module only decides which groups those are.
"""

from __future__ import annotations

# One valid sample: its outcome reward and its step rewards (empty when the estimator uses none).
Sample = tuple[float, tuple[float, ...]]


def informative_groups(groups: dict[int, list[Sample]], use_steps: bool) -> set[int]:
    """The ids of the groups with signal: those whose valid samples do not all share one reward.

    `groups` maps a group id to its valid samples only (masked samples carry no reward to compare).
    With use_steps=False only outcome rewards are compared; with use_steps=True (a process estimator) the
    step rewards too, so samples with one outcome but different step rewards still teach something. A group
    with fewer than two valid samples has no sample to compare against: it is not informative. Rewards are
    compared exactly: a baseline of identical floats gives exactly zero advantage, anything else does not.
    """
    out = set()
    for gid, samples in groups.items():
        keys = {(outcome, steps) if use_steps else (outcome, ()) for outcome, steps in samples}
        if len(samples) >= 2 and len(keys) > 1:
            out.add(gid)
    return out
