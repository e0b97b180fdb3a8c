"""train.deterministic: two runs of one config, and a run stopped after 2 steps and resumed, write the same
metrics.jsonl and samples.jsonl (every key except wall-clock timings), with two generator replicas.

Equal files mean equal prompts, sampling seeds, sampled tokens, rewards, advantages, gradients (grad_norm
to the last bit), weights (the generators sample the same tokens after every sync) and evaluations.
"""

import pytest

from orchestrator.train import run_train
from tests.e2e.runs import config, rows, without_timing

pytestmark = pytest.mark.heavy  # Ray, vLLM or DeepSpeed: left out of `make test-fast`

ARGS = [
    "train.steps=4",
    "train.checkpoint_every=2",
    "rollout.num_generators=2",
    "train.eval_every=2",
    "eval.num_problems=4",
    "eval.k=2",
]


def files(run_dir: str) -> tuple[list[dict], list[dict]]:
    return without_timing(rows(run_dir)), rows(run_dir, "samples.jsonl")


def test_reruns_and_resume_are_identical(ray_local, tmp_path):
    first, second, resumed = (str(tmp_path / name) for name in ("first", "second", "resumed"))
    run_train(config(first, *ARGS))
    run_train(config(second, *ARGS))
    assert files(first) == files(second)

    # 2 + 2: a run of 2 steps (it checkpoints at its end), continued to 4 with resume=true. The lr schedule
    # is constant, so the total step count it is planned over does not matter.
    run_train(config(resumed, *ARGS, "train.steps=2"))
    run_train(config(resumed, *ARGS, "resume=true"))
    assert files(resumed) == files(first)

    metrics, samples = files(first)
    assert [r["step"] for r in metrics] == [0, 1, 2, 3, 4]
    assert len(samples) == 4 * 16 and len({s["replica"] for s in samples}) == 2  # both replicas sampled
