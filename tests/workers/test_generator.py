"""GeneratorWorker on a real vLLM engine (CPU, in-process), plus one round trip through a Ray actor.

One engine serves the whole module (engine start is the slow part); the Ray test starts a second one
in its actor. The policy is a tiny Qwen2 given ~2 s of SFT on arithmetic chains so that it writes lines
(a random model almost never samples "\\n", and step spans need newlines to be tested).
"""

from __future__ import annotations

import copy
import math
import random
import re
import threading

import pytest
import torch

from algo.fingerprint import hash_mismatches, tensor_hashes
from algo.trajectory import PromptRequest
from tasks.models import make_tiny_policy
from tasks.tokenizer import train_bpe_tokenizer

pytestmark = [pytest.mark.heavy, pytest.mark.filterwarnings("ignore::DeprecationWarning")]  # heavy: vLLM
WHITESPACE = " \t\r\n\x0b\x0c"  # the bytes algo.segment treats as content-free


def chain_text(rng: random.Random) -> tuple[str, str]:
    """A prompt like '1+5-8+4=' and its local-format solution, mod 10 (the format of tasks/arithmetic.py)."""
    nums = [rng.randrange(10) for _ in range(rng.randint(3, 4))]
    ops = [rng.choice("+-") for _ in nums[1:]]
    prompt = str(nums[0]) + "".join(o + str(b) for o, b in zip(ops, nums[1:], strict=True)) + "="
    lines, acc = [], nums[0]
    for k, (op, b) in enumerate(zip(ops, nums[1:], strict=True)):
        new = (acc + b if op == "+" else acc - b) % 10
        rest = "".join(o + str(x) for o, x in zip(ops[k + 1 :], nums[k + 2 :], strict=True))
        lines.append(f"{acc}{op}{b}={new}" + (f" {rest}" if rest else ""))
        acc = new
    return prompt, "\n".join(lines) + f"\nA{acc}\n"


def short_sft(model, tok, texts: list[str], steps: int = 60) -> None:
    """A few AdamW steps on full texts + EOS: enough to learn the line format's token statistics."""
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rows = [tok.encode(t) + [tok.eos_token_id] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    labels = ids.masked_fill(mask == 0, -100)
    model.train()
    for step in range(steps):
        batch = torch.arange(step * 16, step * 16 + 16) % len(rows)
        loss = model(input_ids=ids[batch], attention_mask=mask[batch], labels=labels[batch]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """(model_dir, HF model, tokenizer, prompts) of a tiny policy that writes newline-separated steps."""
    rng = random.Random(0)
    pairs = [chain_text(rng) for _ in range(200)]
    tok = train_bpe_tokenizer([p + s for p, s in pairs], vocab_size=300)
    model_dir = tmp_path_factory.mktemp("policy")
    model = make_tiny_policy(model_dir, tok)
    short_sft(model, tok, [p + s for p, s in pairs])
    model.save_pretrained(model_dir)  # float32 safetensors, as the generator will load it
    return str(model_dir), model, tok, [p for p, _ in pairs[:8]]


@pytest.fixture(scope="module")
def worker(policy):
    from workers.generator import GeneratorWorker

    return GeneratorWorker(policy[0], seed=0, kv_cache_gb=0.25, max_model_len=256)


def requests_for(prompts: list[str]) -> list[PromptRequest]:
    return [PromptRequest(prompt_id=f"p{k}", group_id=100 + k, text=p, answer=str(k)) for k, p in enumerate(prompts)]


def hf_logprobs(model, prompt_ids: list[int], response_ids: list[int]) -> list[float]:
    """log softmax of the raw logits at each response position, picked at the sampled token."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + response_ids])).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)
    start = len(prompt_ids) - 1  # logits at position j predict token j + 1
    return [lp[start + t, tok].item() for t, tok in enumerate(response_ids)]


def perturbed(model, scale: float, seed: int) -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (n, (p.detach() + scale * torch.randn(p.shape, generator=g)).contiguous()) for n, p in model.named_parameters()
    ]


def test_tokenizer_round_trips_newlines_through_autotokenizer_and_vllm(worker, policy):
    from transformers import AutoTokenizer

    model_dir, _, tok, prompts = policy
    auto = AutoTokenizer.from_pretrained(model_dir)
    text = prompts[0] + "1+5=6 -8+4\n6-8=8 +4\n\nA2\n"
    ids = auto.encode(text)
    assert auto.decode(ids) == text and ids == tok.encode(text) == worker._tokenizer.encode(text)
    newline_ids = [i for i in ids if auto.decode([i]) == "\n"]
    assert newline_ids and all(worker._token_bytes[i] == b"\n" for i in newline_ids)
    assert worker._token_bytes[tok.eos_token_id] == b""  # EOS joins the step before it


def test_groups_uids_and_prompt_ids(worker, policy):
    _, _, tok, prompts = policy
    reqs = requests_for(prompts[:3])
    trajs = worker.generate(reqs, n=4, temperature=1.0, max_tokens=24)
    assert len(trajs) == 12
    assert [t.group_id for t in trajs] == [100] * 4 + [101] * 4 + [102] * 4  # request order, then sample
    assert [t.info["sample"] for t in trajs] == [0, 1, 2, 3] * 3
    assert len({t.uid for t in trajs}) == 12
    v = worker.get_version()
    assert trajs[5].uid == f"v{v}-r0-g101-p1-1"
    for t, req in zip(trajs, [r for r in reqs for _ in range(4)], strict=True):
        assert (t.prompt_id, t.prompt_text, t.answer, t.policy_version) == (req.prompt_id, req.text, req.answer, v)
        assert t.prompt_ids == tok.encode(req.text)
        assert 1 <= len(t.response_ids) <= 24
        # "length" exactly when the budget ran out without an EOS
        ended_by_eos = t.response_ids[-1] == tok.eos_token_id
        assert t.finish_reason == ("stop" if ended_by_eos else "length")
        assert ended_by_eos or len(t.response_ids) == 24


def test_logprobs_are_raw_model_logprobs_of_the_sampled_tokens(worker, policy):
    """At temperature 0.6 the processed log-probs would differ from the raw ones by a lot; we must get
    the raw model's log-prob of exactly the token that was sampled (what the learner recomputes)."""
    _, model, _, prompts = policy
    trajs = worker.generate(requests_for(prompts[:2]), n=2, temperature=0.6, top_p=0.9, max_tokens=20)
    for t in trajs:
        assert len(t.behavior_logprobs) == len(t.response_ids)
        assert all(math.isfinite(x) and x <= 0 for x in t.behavior_logprobs)
        ref = hf_logprobs(model, t.prompt_ids, t.response_ids)
        assert max(abs(a - b) for a, b in zip(ref, t.behavior_logprobs, strict=True)) < 1e-4


def test_step_spans_cover_the_response_and_match_newlines(worker, policy):
    _, _, tok, prompts = policy
    trajs = worker.generate(requests_for(prompts), n=2, temperature=0.8, max_tokens=40, seed=1)
    multi_step = 0
    for t in trajs:
        spans = t.step_spans
        assert spans[0][0] == 0 and spans[-1][1] == len(t.response_ids)
        assert all(a < b for a, b in spans) and all(spans[k][1] == spans[k + 1][0] for k in range(len(spans) - 1))
        texts = [tok.decode(t.response_ids[a:b], skip_special_tokens=True) for a, b in spans]
        assert all(x.endswith("\n") for x in texts[:-1])  # a step ends on the token completing "\n"
        assert all("\n" not in x.strip(WHITESPACE) for x in texts)  # and no step holds a line break
        lines = [x for x in t.response_text.split("\n") if x.strip(WHITESPACE)]
        assert len(spans) == max(1, len(lines))  # one step per non-blank line of vLLM's own text
        multi_step += len(spans) > 1
    assert multi_step >= len(trajs) // 2  # the SFT'd policy writes lines: the checks above had teeth


def test_stop_string_ends_the_response_after_one_step(worker, policy):
    _, _, tok, prompts = policy
    trajs = worker.generate(requests_for(prompts[:4]), n=2, temperature=1.0, max_tokens=40, stop=["\n"])
    stopped_on_newline = 0
    for t in trajs:
        assert len(t.step_spans) == 1
        if t.response_text.endswith("\n"):  # the stop string is kept in the text ...
            assert t.finish_reason == "stop"
            assert "\n" in tok.decode(t.response_ids[-1:])  # ... and its token ends the ids
            stopped_on_newline += 1
    assert stopped_on_newline >= len(trajs) // 2


def test_stream_yields_every_trajectory_and_matches_generate(worker, policy):
    reqs = requests_for(policy[3][:3])
    args = dict(n=3, temperature=1.0, max_tokens=16, seed=7)
    streamed = list(worker.generate_stream(reqs, **args))
    batched = worker.generate(reqs, **args)
    assert len(streamed) == 9
    key = lambda t: (t.uid, tuple(t.response_ids))  # noqa: E731
    assert sorted(map(key, streamed)) == sorted(map(key, batched))  # same call seed: same samples


def test_a_reissued_sample_is_the_sample_it_replaces(worker, policy):
    """Seeds hash (call seed, group_id, sample index): asking for samples 1 and 3 alone, in another call
    with other neighbours (as after a replica died), draws exactly those samples of the full call."""
    reqs = requests_for(policy[3][:2])
    args = dict(n=4, temperature=1.0, max_tokens=24, seed=11)
    full = {(t.group_id, t.info["sample"]): t.response_ids for t in worker.generate(reqs, **args)}
    subset = [PromptRequest(r.prompt_id, r.group_id, r.text, r.answer, samples=(1, 3)) for r in reqs]
    again = worker.generate(subset, **args)
    assert sorted((t.group_id, t.info["sample"]) for t in again) == [(100, 1), (100, 3), (101, 1), (101, 3)]
    assert all(t.response_ids == full[(t.group_id, t.info["sample"])] for t in again)
    seeds = {tuple(full[(100, i)]) for i in range(4)}
    assert len(seeds) > 1  # the samples of one prompt are not copies of each other
    with pytest.raises(ValueError, match="samples"):
        worker.generate([PromptRequest("p", 0, reqs[0].text, samples=(4,))], **args)


def test_abandoned_stream_blocks_weight_swap_and_leaves_engine_clean(worker, policy):
    _, model, _, prompts = policy
    stream = worker.generate_stream(requests_for(prompts[:4]), n=2, temperature=1.0, max_tokens=32)
    next(stream)
    with pytest.raises(RuntimeError, match="generate_stream"):
        worker.load_weights(worker.get_version() + 1, list(model.named_parameters()))
    stream.close()  # aborts the requests still in flight
    assert not worker._llm.llm_engine.has_unfinished_requests()
    assert len(worker.generate(requests_for(prompts[:1]), n=2, temperature=1.0, max_tokens=8)) == 2


def test_bad_sampling_and_weight_arguments_are_named(worker, policy):
    _, model, _, prompts = policy
    with pytest.raises(ValueError, match="top_p"):
        worker.generate(requests_for(prompts[:1]), n=1, temperature=1.0, top_p=0.0, max_tokens=4)
    twice = requests_for(prompts[:1]) * 2
    with pytest.raises(ValueError, match="repeat"):
        worker.generate(twice, n=1, temperature=1.0, max_tokens=4)
    good = list(model.named_parameters())
    v = worker.get_version()
    with pytest.raises(ValueError, match="model.norm.weight"):
        worker.load_weights(v + 1, [(n, p) for n, p in good if n != "model.norm.weight"])
    with pytest.raises(ValueError, match="shape"):
        worker.load_weights(v + 1, [(n, p[:-1] if n == "model.norm.weight" else p) for n, p in good])
    with pytest.raises(ValueError, match="older"):
        worker.load_weights(v - 1, good)
    assert worker.get_version() == v


def test_load_weights_swaps_live_weights_and_versions_trajectories(worker, policy):
    _, model, _, prompts = policy
    reqs = requests_for(prompts[:2])
    before = worker.generate(reqs, n=1, temperature=0.0, max_tokens=16)
    assert hash_mismatches(worker.weight_hashes(), tensor_hashes(model.named_parameters())) == []

    new = perturbed(model, scale=0.05, seed=3)
    v = worker.get_version() + 1
    info = worker.load_weights(v, dict(new))
    assert info["version"] == v == worker.get_version() and info["load_s"] >= 0
    assert hash_mismatches(tensor_hashes(new), info["hashes"]) == []
    assert len(hash_mismatches(tensor_hashes(model.named_parameters()), info["hashes"])) == len(new)
    live = dict(worker.live_weights())  # the tensors behind the hashes: every one, bit for bit
    assert live.keys() == dict(new).keys()
    assert all(torch.equal(live[n], t) for n, t in new)

    after = worker.generate(reqs, n=1, temperature=0.0, max_tokens=16)
    assert all(t.policy_version == v and t.uid.startswith(f"v{v}-") for t in after)
    assert [t.response_ids for t in after] != [t.response_ids for t in before] or [
        t.behavior_logprobs for t in after
    ] != [t.behavior_logprobs for t in before]
    # The sampled log-probs are the *new* model's: catches a stale tied lm_head (see vllm_ext).
    hf_new = copy.deepcopy(model)  # copying into parameters keeps lm_head tied to the embedding
    with torch.no_grad():
        for name, p in hf_new.named_parameters():
            p.copy_(dict(new)[name])
    for t in after:
        ref = hf_logprobs(hf_new, t.prompt_ids, t.response_ids)
        assert max(abs(a - b) for a, b in zip(ref, t.behavior_logprobs, strict=True)) < 1e-4

    restored = worker.load_weights(v + 1, list(model.named_parameters()))  # later tests see the policy
    assert hash_mismatches(tensor_hashes(model.named_parameters()), restored["hashes"]) == []


def one_ulp_up(named: list[tuple[str, torch.Tensor]], name: str) -> list[tuple[str, torch.Tensor]]:
    """named with one element of tensor `name` moved to the next representable value up."""
    out = []
    for n, t in named:
        if n == name:
            t = t.clone()
            t.view(-1)[7] = torch.nextafter(t.view(-1)[7], torch.tensor(math.inf, dtype=t.dtype))
        out.append((n, t))
    return out


def test_read_back_hashes_equal_the_sent_hashes_and_one_ulp_is_named(worker, policy):
    """The exact sync check end to end on a real engine: what load_weights reads back (through vLLM's
    fused gate_up_proj, packed CPU kernels and padded embedding) hashes like what was sent, tensor by
    tensor, and one ulp in one sent tensor is named by the driver's comparison."""
    from orchestrator.generators import check_loaded
    from orchestrator.runtime import RoleError

    _, model, _, _ = policy
    name = "model.layers.1.mlp.up_proj.weight"  # half of a fused gate_up_proj in the engine
    sent = perturbed(model, scale=0.05, seed=6)
    v = worker.get_version() + 1
    info = worker.load_weights(v, sent)
    check_loaded(0, v, tensor_hashes(sent), info["hashes"])  # equal: no error
    off = one_ulp_up(sent, name)
    with pytest.raises(RoleError, match=rf"generator 0 .* version {v}: 1 of {len(sent)} .*{re.escape(name)}"):
        check_loaded(0, v, tensor_hashes(off), info["hashes"])
    # The engine itself tells one ulp apart: load the changed weights and only that tensor differs.
    info = worker.load_weights(v + 1, off)
    assert hash_mismatches(tensor_hashes(sent), info["hashes"]) == [name]
    # bfloat16 sent into this float32 engine: read back in the dtype that was sent, it hashes equal.
    bf16 = [(n, t.bfloat16()) for n, t in sent]
    info = worker.load_weights(v + 2, bf16)
    assert hash_mismatches(tensor_hashes(bf16), info["hashes"]) == []
    worker.load_weights(v + 3, list(model.named_parameters()))  # later tests see the policy


def test_receive_weights_from_a_gloo_broadcast(worker, policy):
    """The collective sync's receiving side inside the vLLM worker; the sender (learner rank 0 in a run)
    is a thread here, as the in-process receive call blocks until every tensor arrived."""
    from engine.broadcast import BroadcastChannel, weights_meta
    from engine.build import free_port

    _, model, _, _ = policy
    sent = perturbed(model, scale=0.05, seed=7)
    port, out = free_port(), {}

    def send() -> None:
        channel = BroadcastChannel(
            master_addr="127.0.0.1", master_port=port, rank=0, world_size=2, backend="gloo", timeout_s=60
        )
        out["count"] = channel.send(sent)
        channel.close()

    sender = threading.Thread(target=send)
    sender.start()
    v = worker.get_version() + 1
    info = worker.receive_weights(
        v,
        master_addr="127.0.0.1",
        master_port=port,
        rank=1,
        world_size=2,
        meta=weights_meta(sent),
        backend="gloo",
        device="cpu",
        timeout_s=60,
    )
    sender.join(timeout=60)
    assert out["count"] == len(sent) and info["version"] == v == worker.get_version()
    assert hash_mismatches(tensor_hashes(sent), info["hashes"]) == []
    live = dict(worker.live_weights())
    assert all(torch.equal(live[n], t) for n, t in sent)
    worker.load_weights(v + 1, list(model.named_parameters()))  # later tests see the policy


@pytest.mark.skipif(torch.cuda.is_available(), reason="the packed-copy quirk is vLLM's CPU backend")
def test_bare_vllm_reload_leaves_tied_lm_head_stale_and_read_back_catches_it(worker, policy):
    """Documents why vllm_ext repacks after reload: vLLM's reload alone keeps the tied lm_head's
    packed copy of the old embedding. If this starts failing, vLLM fixed it upstream."""
    _, model, _, _ = policy
    new = perturbed(model, scale=0.05, seed=4)
    worker._llm.collective_rpc(lambda self, w: self.model_runner.reload_weights(weights_iterator=iter(w)), args=(new,))
    with pytest.raises(RuntimeError, match="lm_head"):
        worker.live_weights()
    worker.load_weights(worker.get_version() + 1, list(model.named_parameters()))
    assert hash_mismatches(worker.weight_hashes(), tensor_hashes(model.named_parameters())) == []


def test_ray_actor_streams_and_loads_weights(policy):
    ray = pytest.importorskip("ray")
    from workers.generator import GeneratorWorker

    model_dir, model, _, prompts = policy
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        actor = ray.remote(num_cpus=1)(GeneratorWorker).remote(
            model_dir, replica=1, kv_cache_gb=0.25, max_model_len=256
        )
        assert ray.get(actor.ping.remote(), timeout=300) == "generator r1 v0"
        gen = actor.generate_stream.options(num_returns="streaming").remote(
            requests_for(prompts[:3]), n=2, temperature=1.0, max_tokens=16
        )
        got = []
        while True:
            ready, _ = ray.wait([gen], timeout=120)
            assert ready, "no trajectory within 120 s"
            try:
                ref = next(gen)
            except StopIteration:
                break
            got.append(ray.get(ref, timeout=60))
        expected = [f"v0-r1-g{100 + k}-p{k}-{i}" for k in range(3) for i in range(2)]
        assert sorted(t.uid for t in got) == sorted(expected)

        new = perturbed(model, scale=0.05, seed=5)
        info = ray.get(actor.load_weights.remote(1, new), timeout=120)
        assert info["version"] == 1 and hash_mismatches(tensor_hashes(new), info["hashes"]) == []
        trajs = ray.get(
            actor.generate.remote(requests_for(prompts[:1]), n=1, temperature=1.0, max_tokens=4), timeout=120
        )
        assert trajs[0].policy_version == 1
    finally:
        ray.shutdown()
