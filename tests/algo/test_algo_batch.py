"""collate / shift_logprobs on a two-trajectory example."""

import pytest
import torch

from algo.batch import collate, shift_logprobs
from algo.trajectory import Trajectory

PAD = 0


def traj(uid, prompt, response, spans, **kw):
    return Trajectory(
        uid=uid,
        prompt_id="p",
        group_id=kw.pop("group_id", 3),
        policy_version=1,
        prompt_ids=prompt,
        response_ids=response,
        behavior_logprobs=kw.pop("behavior_logprobs", [-0.1 * (i + 1) for i in range(len(response))]),
        finish_reason="stop",
        step_spans=spans,
        **kw,
    )


def example():
    a = traj("a", [5, 6], [7, 8, 9], [(0, 2), (2, 3)], step_rewards=[0.9, 0.1], outcome_reward=1.0)
    b = traj("b", [5, 6, 4, 4], [9], [(0, 1)], step_rewards=None, outcome_reward=None, sample_valid=False, group_id=4)
    return a, b


def test_collate_shapes_and_alignment():
    out = collate(list(example()), PAD)
    # L = max(2 + 3, 4 + 1) = 5 ; K = 2
    assert out["input_ids"].tolist() == [[5, 6, 7, 8, 9], [5, 6, 4, 4, 9]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert out["response_mask"].tolist() == [[0, 0, 1, 1, 1], [0, 0, 0, 0, 1]]
    assert out["step_index"].tolist() == [[-1, -1, 0, 0, 1], [-1, -1, -1, -1, 0]]
    torch.testing.assert_close(out["behavior_logprobs"], torch.tensor([[0, 0, -0.1, -0.2, -0.3], [0, 0, 0, 0, -0.1]]))
    torch.testing.assert_close(out["step_rewards"], torch.tensor([[0.9, 0.1], [0.0, 0.0]]))
    assert out["step_mask"].tolist() == [[1, 1], [1, 0]]
    assert out["outcome"].tolist() == [1.0, 0.0]
    assert out["group_ids"].tolist() == [3, 4] and out["group_ids"].dtype == torch.long
    assert out["sample_valid"].tolist() == [1.0, 0.0]
    assert out["input_ids"].dtype == torch.long and out["response_mask"].dtype == torch.float32


def test_collate_right_pads():
    a, _ = example()
    short = traj("c", [1], [2], [(0, 1)])
    out = collate([a, short], pad_id=99)
    assert out["input_ids"][1].tolist() == [1, 2, 99, 99, 99]
    assert out["attention_mask"][1].tolist() == [1, 1, 0, 0, 0]
    assert out["response_mask"][1].tolist() == [0, 1, 0, 0, 0]


def test_shift_logprobs_alignment():
    # a "model" whose logits at position t put log-prob log(.5) on token (t + 1) % V and
    # spread the rest: then the log-prob of input_ids[b, t] is read from logits[b, t - 1]
    V = 10
    ids = torch.tensor([[5, 6, 7, 3], [1, 2, 9, 9]])
    logits = torch.zeros(2, 4, V)
    for b in range(2):
        for t in range(4):
            logits[b, t, ids[b, (t + 1) % 4]] = 5.0
    lp = shift_logprobs(logits, ids)
    hit = 5.0 - torch.logsumexp(torch.tensor([5.0] + [0.0] * (V - 1)), 0)
    assert lp[:, 0].tolist() == [0.0, 0.0]
    torch.testing.assert_close(lp[0, 1:], hit.repeat(3))
    # row 1: ids[1, 3] = 9 is predicted at t = 2 (logits[1, 2] favour ids[1, 3] = 9) -> hit
    torch.testing.assert_close(lp[1, 3], hit)
    ref = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(lp[:, 1:], ref)


def test_collate_errors_name_the_trajectory():
    a, _ = example()
    with pytest.raises(ValueError, match="'x'.*not contiguous"):
        collate([traj("x", [1], [2, 3], [(0, 1), (2, 2)])], PAD)
    with pytest.raises(ValueError, match="'y'.*end at 1"):
        collate([traj("y", [1], [2, 3], [(0, 1)])], PAD)
    with pytest.raises(ValueError, match="'z'.*logprobs"):
        collate([traj("z", [1], [2, 3], [(0, 2)], behavior_logprobs=[-0.1])], PAD)
    with pytest.raises(ValueError, match="'w'.*step_rewards"):
        collate([traj("w", [1], [2, 3], [(0, 2)], step_rewards=[0.1, 0.2])], PAD)
    with pytest.raises(ValueError, match="'v'.*empty prompt"):
        collate([traj("v", [], [2], [(0, 1)])], PAD)
