"""Manual check that vLLM serves a policy directory exactly as the learner sees it.

    VLLM_CPU_KVCACHE_SPACE=1 OMP_NUM_THREADS=1 python -m workers.check_vllm tasks/assets/base_policy

Loads the directory with vLLM in float32 (the learner's dtype, so generator and learner weights are
equal), decodes held-out arithmetic prompts greedily with vLLM and with Hugging Face ``generate``, and
prints how many texts are identical (expected: all) and both accuracies. Not a pytest test: a vLLM
engine takes 10-30 s to start and a whole core while it runs.
"""

from __future__ import annotations

import json
import os
import sys


def main(policy_dir: str, n: int = 64, max_tokens: int = 96) -> dict:
    import torch
    from vllm import LLM, SamplingParams

    from tasks.arithmetic import ArithmeticTask, prompt_text
    from tasks.models import hf_generate, load_policy
    from tasks.oracle import label_response
    from tasks.tokenizer import load_tokenizer

    torch.set_num_threads(1)
    problems = ArithmeticTask().sample(n, "eval", seed=12345)
    prompts = [prompt_text(p) for p in problems]
    llm = LLM(model=policy_dir, dtype="float32", enforce_eager=True, max_model_len=512, seed=0)
    outs = llm.generate(prompts, SamplingParams(max_tokens=max_tokens, temperature=0))
    v_text = [o.outputs[0].text for o in outs]
    h_text = [
        t[0]
        for t in hf_generate(load_policy(policy_dir).eval(), load_tokenizer(policy_dir), prompts, 1, 0.0, max_tokens)
    ]
    return {
        "n": n,
        "vllm_dtype": str(llm.llm_engine.model_config.dtype),
        "identical_greedy_texts": sum(a == b for a, b in zip(v_text, h_text, strict=True)),
        "vllm_accuracy": sum(label_response(p, t).outcome for p, t in zip(problems, v_text, strict=True)) / n,
        "hf_accuracy": sum(label_response(p, t).outcome for p, t in zip(problems, h_text, strict=True)) / n,
    }


if __name__ == "__main__":  # vLLM starts worker processes: the guard is required
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if len(sys.argv) != 2:
        sys.exit("usage: python -m workers.check_vllm POLICY_DIR")
    print(json.dumps(main(sys.argv[1])))
