"""Rollout actor: samples step-segmented trajectories with vLLM and takes versioned weight updates.

A plain class: the orchestrator wraps it with ``ray.remote(num_cpus=...)(GeneratorWorker)``; tests and
``steprl eval`` use it in-process. One instance owns one vLLM engine (one replica). No paper behind it:
it is the adapter between vLLM and the Trajectory type.

Behaviour log-probs: the engine runs with ``logprobs_mode="raw_logprobs"`` and ``logprobs=0``, so each
response token carries log softmax(logits)[sampled token] of the *raw* model, before temperature and
top-p. That is the policy the learner recomputes (it has no temperature); the ratio pi/mu is then exact
at temperature 1 and top-p 1, and an approximation otherwise (mu really sampled from the processed
distribution). The sampled token's entry is looked up by id, so a missing one is an error, not a guess.

Text: ``response_ids`` are exactly the sampled tokens (EOS included when it ended the response);
``response_text`` is their decoding (special tokens skipped, as vLLM's own), with the stop string kept; step
spans come from the ids. vLLM detokenizes only calls with stop strings, which need the text; elsewhere the ids
are decoded once per sample, and log-probs come back as flat lists: both save most of what per-token
log-probs otherwise cost.

Sampling: each sample of a prompt is its own engine request (``n=1``), so each trajectory can be handed
out the moment it finishes. With ``seed=None`` the engine's generator (seeded ``seed + replica`` at start)
draws; with a call seed, sample i of the request with group_id g uses ``derive_seed(seed, g, i)``
(algo/seeding.py): the seed depends on the sample, never on the replica or on what else is in the call,
so a sample re-issued elsewhere after a crash is drawn with the same seed. ``PromptRequest.samples``
restricts a request to some sample indices (the re-issue of a dead replica's unfinished samples).

Generation from a prefix: a request's ``prefix`` (steps already written) follows the prompt; the response
holds only the continuation, and ``stop=[step_delimiter]`` ends it after one more step. Labelling (Monte-Carlo
rollouts from every step prefix) and step-level search stand on it.

Weight swap and pausing: the actor is single-threaded (Ray runs one method at a time unless
max_concurrency is raised, which this class does not support), and ``generate`` / ``generate_stream``
drain every request they add before they return. So ``load_weights`` / ``receive_weights`` can only run
between calls, with no request in flight. The one way to interleave in-process is to swap weights while
a ``generate_stream`` iterator is half consumed: that raises. After a swap the prefix cache is reset,
so no KV computed under the old weights is reused.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch

from algo.seeding import derive_seed
from algo.segment import split_steps
from algo.trajectory import PromptRequest, Trajectory
from engine.process import prepare_process
from workers.vllm_setup import check_sampling, checkpoint_shapes, set_vllm_env, token_bytes_table

_EXTENSION = "workers.vllm_ext.WeightSyncExtension"
_FINISH_REASONS = {"stop": "stop", "length": "length"}  # vLLM's finish_reason -> Trajectory's


class GeneratorWorker:
    """One vLLM engine that turns PromptRequests into Trajectories (see the module docstring).

    kv_cache_gb sizes the KV cache on CPU; on GPU vLLM sizes it from gpu_memory_utilization instead.
    seed + replica seeds the engine; with the in-process engine vLLM also seeds this process's global
    RNGs with it. Single-threaded use only (no Ray max_concurrency > 1): see the module docstring.
    """

    def __init__(
        self,
        model_dir: str,
        *,
        seed: int = 0,
        dtype: str = "float32",
        max_model_len: int = 512,
        kv_cache_gb: float = 1.0,
        step_delimiter: str = "\n",
        enforce_eager: bool = True,
        gpu_memory_utilization: float = 0.5,
        threads: int = 1,
        replica: int = 0,
        trust_remote_code: bool = False,
        log_file: str | None = None,
    ):
        if not Path(model_dir, "config.json").is_file():
            raise FileNotFoundError(f"model_dir={model_dir!r} has no config.json")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if kv_cache_gb <= 0:
            raise ValueError(f"kv_cache_gb must be > 0, got {kv_cache_gb}")
        if not step_delimiter:
            raise ValueError("step_delimiter must be a non-empty string")
        self.model_dir, self.replica, self.step_delimiter = model_dir, replica, step_delimiter
        self.version = 0
        self._open_streams = 0
        self._calls = 0  # makes engine request ids unique across calls
        self._expected_shapes = checkpoint_shapes(model_dir)

        on_cpu = not torch.cuda.is_available()
        prepare_process(threads, log_file=log_file)
        set_vllm_env(on_cpu)
        from vllm import LLM  # after the environment is set

        # On CPU, no chunked prefill: a prompt split over two engine steps rewinds its per-request generator,
        # which a CPU torch.Generator cannot do ("CPU Generator does not use offset"); every seeded call with
        # more prompt tokens than one step's budget (4096) crashed, e.g. Monte-Carlo labelling from prefixes.
        memory = (
            {"kv_cache_memory_bytes": int(kv_cache_gb * 2**30), "enable_chunked_prefill": False}
            if on_cpu
            else {"gpu_memory_utilization": gpu_memory_utilization}
        )
        start = time.perf_counter()
        self._llm = LLM(
            model=model_dir,
            dtype=dtype,  # type: ignore[arg-type]  # a dtype name; vLLM checks it, its hint is a Literal of names
            seed=seed + replica,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            logprobs_mode="raw_logprobs",
            worker_extension_cls=_EXTENSION,
            trust_remote_code=trust_remote_code,
            **memory,
        )
        self.engine_start_s = time.perf_counter() - start
        self._tokenizer = self._llm.get_tokenizer()  # the engine's own: prompt ids match vLLM's
        vocab = self._llm.llm_engine.model_config.get_vocab_size()
        self._token_bytes = token_bytes_table(self._tokenizer, vocab)

    # ----------------------------------------------------------------------------- sampling
    def generate(
        self,
        requests: list[PromptRequest],
        *,
        n: int,
        temperature: float,
        top_p: float = 1.0,
        max_tokens: int,
        stop: list[str] | None = None,
        seed: int | None = None,
    ) -> list[Trajectory]:
        """n trajectories per request (or its `samples`), ordered by request then sample index."""
        order = {(r.group_id, r.prompt_id): k for k, r in enumerate(requests)}
        out = list(
            self.generate_stream(
                requests, n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=stop, seed=seed
            )
        )
        return sorted(out, key=lambda t: (order[(t.group_id, t.prompt_id)], t.info["sample"]))

    def generate_stream(
        self,
        requests: list[PromptRequest],
        *,
        n: int,
        temperature: float,
        top_p: float = 1.0,
        max_tokens: int,
        stop: list[str] | None = None,
        seed: int | None = None,
    ) -> Iterator[Trajectory]:
        """Yield each trajectory as soon as its request finishes (a Ray streaming generator).

        Like any generator, nothing runs (not even argument checks) until the first next().
        """
        # Runs at the first next(): an unstarted stream has added nothing, so it cannot mix versions.
        check_sampling(requests, n, temperature, top_p, max_tokens)
        self._open_streams += 1
        try:
            yield from self._run(requests, n, temperature, top_p, max_tokens, stop, seed)
        finally:
            self._open_streams -= 1

    def _run(self, requests, n, temperature, top_p, max_tokens, stop, seed) -> Iterator[Trajectory]:
        from vllm import SamplingParams
        from vllm.inputs import tokens_input
        from vllm.sampling_params import RequestOutputKind

        base = SamplingParams(
            n=1,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            stop=list(stop) if stop else None,
            logprobs=0,
            flat_logprobs=True,  # a few flat lists per request, not a dict and a Logprob object per token
            # Text only where a stop string needs it: otherwise the ids are decoded once at the end, not token by
            # token (with the log-probs' token strings, that detokenization cost a third of the sampling time).
            detokenize=bool(stop),
            include_stop_str_in_output=True,  # keeps text in line with the token ids
            output_kind=RequestOutputKind.FINAL_ONLY,
        )  # no per-step partial outputs
        self._calls += 1
        version = self.version  # fixed for the call: weights cannot change until it returns
        engine = self._llm.llm_engine
        pending: dict[str, tuple[PromptRequest, int]] = {}
        try:
            for k, req in enumerate(requests):
                prompt = tokens_input(self._prompt_ids(req), prompt=req.text + req.prefix)  # tokenized once
                for i in range(n) if req.samples is None else req.samples:
                    params = base.clone()
                    params.seed = None if seed is None else derive_seed(seed, req.group_id, i)
                    rid = f"c{self._calls}-{k}-{i}"
                    try:
                        engine.add_request(rid, prompt, params)
                    except Exception as e:  # vLLM's message names neither the prompt nor the field
                        raise ValueError(
                            f"generator r{self.replica}: vLLM rejected prompt_id={req.prompt_id!r}: {e}"
                        ) from e
                    pending[rid] = (req, i)
            while pending:
                if not engine.has_unfinished_requests():
                    raise RuntimeError(
                        f"generator r{self.replica}: engine idle with {len(pending)} "
                        f"requests unfinished: {sorted(pending)[:5]}"
                    )
                for output in engine.step():
                    if output.finished:
                        req, i = pending.pop(output.request_id)
                        yield self._trajectory(output, req, i, version, engine_text=bool(stop))
        finally:
            if pending:  # consumer stopped early or an error: leave the engine empty for the next call
                engine.abort_request(list(pending))

    def _prompt_ids(self, req: PromptRequest) -> list[int]:
        """The prompt's ids, then the prefix's (apart, so no BPE merge crosses the prompt/response boundary)."""
        ids = self._tokenizer.encode(req.text)
        return ids + self._tokenizer.encode(req.prefix, add_special_tokens=False) if req.prefix else ids

    def _trajectory(self, output, req: PromptRequest, i: int, version: int, engine_text: bool) -> Trajectory:
        comp = output.outputs[0]
        if comp.finish_reason not in _FINISH_REASONS:
            raise RuntimeError(
                f"prompt {req.prompt_id} sample {i}: vLLM finish_reason "
                f"{comp.finish_reason!r} (expected one of {sorted(_FINISH_REASONS)})"
            )
        response = [int(t) for t in comp.token_ids]
        flat = comp.logprobs  # FlatLogprobs: position t's entries are [start_indices[t], end_indices[t])
        if flat is None or len(flat.start_indices) != len(response):
            raise RuntimeError(
                f"prompt {req.prompt_id} sample {i}: {len(response)} tokens but "
                f"{None if flat is None else len(flat.start_indices)} logprob entries"
            )
        logprobs = []
        for t, tok in enumerate(response):
            ids = flat.token_ids[flat.start_indices[t] : flat.end_indices[t]]
            if tok not in ids:
                raise RuntimeError(
                    f"prompt {req.prompt_id} sample {i}: no logprob for the sampled "
                    f"token {tok} at position {t} (got ids {sorted(ids)})"
                )
            logprobs.append(float(flat.logprobs[flat.start_indices[t] + ids.index(tok)]))
        # vLLM's text where it detokenized (stop strings), else the same decoding of the ids (special tokens skipped)
        text = comp.text if engine_text else self._tokenizer.decode(response, skip_special_tokens=True)
        return Trajectory(
            uid=f"v{version}-r{self.replica}-g{req.group_id}-{req.prompt_id}-{i}",
            prompt_id=req.prompt_id,
            group_id=req.group_id,
            policy_version=version,
            prompt_ids=[int(t) for t in output.prompt_token_ids],
            response_ids=response,
            behavior_logprobs=logprobs,
            finish_reason=_FINISH_REASONS[comp.finish_reason],
            step_spans=split_steps(response, self._token_bytes, self.step_delimiter),
            prompt_text=req.text,
            response_text=text,
            answer=req.answer,
            question=req.question or req.text,
            info={"replica": self.replica, "sample": i, **({"prefix": req.prefix} if req.prefix else {})},
        )

    def standalone_rate(
        self, requests: list[PromptRequest], *, n: int, temperature: float, max_tokens: int, repeats: int = 3
    ) -> dict:
        """The engine's tokens/s on these prompts outside the loop (`steprl bench`), median of `repeats` calls
        after an untimed one (the first call of each kind warms up): bare vLLM (one `LLM.generate` call, n
        samples per prompt, no log-probs) and this class's own `generate` (a request per sample, log-probs,
        Trajectories). Their gap, and the gap to the loop, say where generation time goes."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=self._prompt_ids(r)) for r in requests]
        params = SamplingParams(n=n, temperature=temperature, max_tokens=max_tokens, seed=0)

        def bare() -> int:
            outputs = self._llm.generate(prompts, params, use_tqdm=False)
            return sum(len(c.token_ids) for o in outputs for c in o.outputs)

        def own() -> int:
            trajectories = self.generate(requests, n=n, temperature=temperature, max_tokens=max_tokens, seed=0)
            return sum(len(t.response_ids) for t in trajectories)

        return {f"{name}_tok_s": _median_rate(fn, repeats) for name, fn in (("bare", bare), ("generate", own))}

    # ----------------------------------------------------------------------------- weights
    def load_weights(self, version: int, weights: list[tuple[str, torch.Tensor]] | dict[str, torch.Tensor]) -> dict:
        """Swap in HF-named full weights (model.named_parameters() of the learner's HF model), the
        object_store sync. Returns {"version", "load_s", "hashes"}: load_s covers the copy into the engine
        only; hashes are tensor_hashes of the engine's weights read back in the dtypes that were sent."""
        self._check_swap(version)
        items = list(weights.items()) if isinstance(weights, dict) else list(weights)
        self._check_weights([(name, tuple(t.shape)) for name, t in items])
        dtypes = {name: str(t.dtype).removeprefix("torch.") for name, t in items}
        return self._swap(version, dtypes, lambda: self._llm.collective_rpc("steprl_reload_weights", args=(items,)))

    def receive_weights(
        self,
        version: int,
        *,
        master_addr: str,
        master_port: int,
        rank: int,
        world_size: int,
        meta: list[tuple[str, tuple[int, ...], str]],
        backend: str,
        device: str,
        timeout_s: float,
    ) -> dict:
        """The collective sync: join learner rank 0's BroadcastChannel as `rank` and swap in what it
        broadcasts (meta: (name, shape, dtype) per tensor, in send order). Returns what load_weights does;
        load_s covers the broadcast and the copy into the engine."""
        self._check_swap(version)
        self._check_weights([(name, tuple(shape)) for name, shape, _ in meta])
        dtypes = {name: dtype for name, _, dtype in meta}
        args = (master_addr, master_port, rank, world_size, meta, backend, device, timeout_s)
        return self._swap(version, dtypes, lambda: self._llm.collective_rpc("steprl_receive_weights", args=args))

    def _check_swap(self, version: int) -> None:
        if self._open_streams:
            raise RuntimeError(
                f"generator r{self.replica}: weight swap to version {version} while "
                f"{self._open_streams} generate_stream call(s) are unfinished"
            )
        if version < self.version:
            raise ValueError(
                f"generator r{self.replica}: version {version} is older than the loaded version {self.version}"
            )

    def _swap(self, version: int, dtypes: dict[str, str], reload) -> dict:
        """reload() the engine's weights, reset the prefix cache, hash the read-back, then take the version."""
        start = time.perf_counter()
        reload()
        if not self._llm.reset_prefix_cache():  # cached prompt KV was computed with the old weights
            raise RuntimeError(f"generator r{self.replica}: could not reset the prefix cache")
        load_s = time.perf_counter() - start
        hashes = self.weight_hashes(dtypes)  # also checks the packed CPU copies: raises before versioning
        self.version = version
        return {"version": version, "load_s": load_s, "hashes": hashes}

    def _check_weights(self, shapes: list[tuple[str, tuple[int, ...]]]) -> None:
        """Exactly the checkpoint's tensor names and shapes: vLLM would only log a missing one."""
        names = [name for name, _ in shapes]
        dupes = sorted(name for name, c in Counter(names).items() if c > 1)
        if dupes:
            raise ValueError(f"load_weights: duplicate names {dupes[:5]}")
        missing = sorted(set(self._expected_shapes) - set(names))
        extra = sorted(set(names) - set(self._expected_shapes))
        if missing or extra:
            raise ValueError(
                f"load_weights: names differ from {self.model_dir}'s checkpoint: missing "
                f"{missing[:5]} ({len(missing)}), unexpected {extra[:5]} ({len(extra)}); send "
                f"model.named_parameters() of the HF model (tied tensors once)"
            )
        for name, shape in shapes:
            if shape != self._expected_shapes[name]:
                raise ValueError(
                    f"load_weights: {name} has shape {shape}, the checkpoint has {self._expected_shapes[name]}"
                )

    def live_weights(self) -> list[tuple[str, torch.Tensor]]:
        """The engine's weights read back under HF names and shapes (diagnostics and tests)."""
        return self._llm.collective_rpc("steprl_named_weights")[0]

    def weight_hashes(self, dtypes: dict[str, str] | None = None) -> dict[str, str]:
        """algo.fingerprint.tensor_hashes of the engine's live weights, cast to dtypes[name] where given."""
        return self._llm.collective_rpc("steprl_weight_hashes", args=(dtypes or {},))[0]

    def get_version(self) -> int:
        return self.version

    def ping(self) -> str:
        return f"generator r{self.replica} v{self.version}"


def _median_rate(generate_tokens, repeats: int) -> float:
    """Median tokens/s of `repeats` timed calls of generate_tokens() -> tokens, after one untimed call."""
    generate_tokens()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        tokens = generate_tokens()
        rates.append(tokens / (time.perf_counter() - start))
    return sorted(rates)[len(rates) // 2]
