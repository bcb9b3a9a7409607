"""The planner LM on vLLM (the `[vllm]` extra; `load_lm(path, backend="vllm")`).

vLLM runs its own scheduler, so this backend has no step-wise `prefill`/`step`; instead it takes
whole requests (`VLLMRequest`) and lets the caller steer every sampling step through a *row
hook*: a function registered for one `generate` call that gets the batch logits and which rows
belong to which request (its conditional row and, with CFG, its unconditional one) before vLLM's
own temperature and sampling, and rewrites them for all its rows at once.
`songstep.sampling.lm_vllm` uses it to apply, per step and exactly as the transformers path
does, CFG, the grammar constraint, the repetition penalty, top-k and top-p (vLLM's own
top-k/top-p and penalties stay off, so the order is upstream's PyTorch order).

Lock-step CFG: the two rows of a pair ask for the same seed and the hook writes the same logits
into both, so vLLM samples the same token for both (its per-request generator sees the same
number of draws). A pair is only in lock-step while both rows are in every batch, so requests
are grouped to fit the scheduler's token budget and the KV cache (no chunked or split prefill,
no preemption); the hook reports a pair that fell out of step, and the caller raises.

Each `generate` call registers its hook under a fresh key in the backend's own `HookRegistry`
(per-request state, removed when the call ends); the engine's logits processor looks rows up
there. The hooks live in this process: the engine must run in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`,
single-worker executor), and on vLLM's V1 model runner, whose logits processors see each
request's output tokens on the host (`VLLM_USE_V2_MODEL_RUNNER=0`; Model Runner V2, vLLM's
default on CUDA, has another processor interface); `VLLMBackend` sets both before building the
engine.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from songstep.errors import SongstepError
from songstep.models.lm_backend import WHOLE_REQUEST

logger = logging.getLogger(__name__)

# hook(logits [N, V] float32, rows {role: (batch index, output token ids)}); roles "cond:i" /
# "uncond:i" for request i of one generate call
RowHook = Callable[[torch.Tensor, dict[str, tuple[int, list[int]]]], None]
KEY_ARG, ROLE_ARG = "songstep_row", "songstep_role"
COND, UNCOND = "cond", "uncond"


class HookRegistry:
    """The row hooks of one engine's running `generate` calls, by key. Each `VLLMBackend` owns
    one and hands it to its engine's logits processor, so nothing lives at module level and two
    engines in one process never see each other's hooks."""

    def __init__(self) -> None:
        self._hooks: dict[str, RowHook] = {}

    def get(self, key: str) -> RowHook | None:
        return self._hooks.get(key)

    @contextmanager
    def active(self, key: str, hook: RowHook) -> Iterator[None]:
        """Register `hook` under `key` for the duration of one generation."""
        if key in self._hooks:
            raise SongstepError(f"row hook {key!r} is already registered")
        self._hooks[key] = hook
        try:
            yield
        finally:
            self._hooks.pop(key, None)

    def __len__(self) -> int:
        return len(self._hooks)


def _hook_processor_class(registry: HookRegistry):
    """vLLM's `LogitsProcessor` subclass that dispatches batch rows to `registry`'s hooks.
    Built lazily (importing this module does not import vllm), one class per backend: vLLM
    instantiates the class itself, so the registry travels in the class's closure."""
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

    class RowHookProcessor(LogitsProcessor):
        """Tracks which batch row belongs to which (key, role) and calls the hooks. Not argmax
        invariant: it runs before penalties, temperature and sampling."""

        def __init__(self, vllm_config, device, is_pin_memory):
            self.slots: dict[int, tuple[str, str, list[int]]] = {}

        def is_argmax_invariant(self) -> bool:
            return False

        def update_state(self, batch_update: BatchUpdate | None) -> None:
            if batch_update is None:
                return
            for index in batch_update.removed:
                self.slots.pop(index, None)
            for index, params, _prompt, output in batch_update.added:
                args = (params.extra_args or {}) if params is not None else {}
                if KEY_ARG in args:
                    self.slots[index] = (args[KEY_ARG], args.get(ROLE_ARG, COND), output)
                else:
                    self.slots.pop(index, None)
            for a, b, direction in batch_update.moved:
                sa, sb = self.slots.pop(a, None), self.slots.pop(b, None)
                if sa is not None:
                    self.slots[b] = sa
                if direction == MoveDirectionality.SWAP and sb is not None:
                    self.slots[a] = sb

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            groups: dict[str, dict[str, tuple[int, list[int]]]] = {}
            for index, (key, role, output) in self.slots.items():
                if index < logits.shape[0]:
                    groups.setdefault(key, {})[role] = (index, output)
            for key, rows in groups.items():
                hook = registry.get(key)
                if hook is not None:
                    hook(logits, rows)
            return logits

    return RowHookProcessor


@contextmanager
def isolated_rng() -> Iterator[None]:
    """Keep the process's global random state (torch CPU and CUDA, `random`, numpy) as it was:
    the in-process engine seeds them all at start-up and its CPU sampler draws from torch's."""
    import random

    import numpy as np

    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


@dataclass
class VLLMRequest:
    """One sequence to generate: prompt ids, an optional unconditional prompt (a CFG pair,
    generated in lock-step with the same seed), its seed and token cap."""

    prompt: Sequence[int]
    uncond_prompt: Sequence[int] | None = None
    seed: int = 0
    max_tokens: int = 1


@dataclass
class VLLMOutput:
    tokens: list[int]  # generated ids, the stop token included when it was sampled
    uncond_tokens: list[int] | None = None


PROMPT_BUDGET = 2048  # prompt tokens per row that one prefill step holds
KV_MARGIN_TOKENS = 256  # per row: vLLM's block rounding and bookkeeping


def _engine_bytes_per_token(config: Any, dtype: torch.dtype | str) -> int:
    """KV-cache bytes per token of a transformers-style config (K and V, every layer) in the
    engine's dtype ("auto": the config's, else bf16)."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if dtype == "auto":
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.bfloat16
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, torch.bfloat16)
    return 2 * config.num_hidden_layers * heads * head_dim * torch.empty(0, dtype=dtype).element_size()


class VLLMBackend:
    """The planner LM served by a `vllm.LLM` (see the module docstring).

    `max_rows` bounds the rows decoded together (a batch of N with CFG is 2N rows),
    `max_model_len` each row's prompt + generated tokens, `max_batched_tokens` the prompt tokens
    of one group (default `max_rows` × 2 048); the KV cache is sized to hold `max_rows` full
    rows (`kv_cache_bytes` overrides). Rows that do not fit run in later groups. On CUDA the
    engine is told to expect 90% of the memory free at start-up, at most (other models may be
    loaded). `engine_kwargs` go to `vllm.LLM` (e.g. `enforce_eager`, `load_format`).
    AutoScore reads `target_stats` (vLLM's prompt logprobs) instead of full logits."""

    # whole requests only (no prefill/step, no full teacher-forced logits); vLLM computes the full
    # LM head, so constraints see full-vocabulary logits
    capabilities = WHOLE_REQUEST

    def __init__(
        self,
        path: str | Path,
        *,
        dtype: torch.dtype | str = "auto",
        max_model_len: int = 4096,
        max_rows: int = 16,
        max_batched_tokens: int | None = None,
        kv_cache_bytes: int | None = None,
        enforce_eager: bool | None = None,
        **engine_kwargs: Any,
    ):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the row hooks live in this process
        # vLLM's Model Runner V2 (its default on CUDA with Triton) takes another logits-processor
        # interface (slot-indexed, token history on the device); the row hooks use the V1 one
        if os.environ.get("VLLM_USE_V2_MODEL_RUNNER", "0") != "0":
            logger.warning("the vLLM planner backend needs vLLM's V1 model runner; VLLM_USE_V2_MODEL_RUNNER=0")
        os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"
        from transformers import AutoConfig
        from vllm import LLM

        self.hooks = HookRegistry()  # the running generate calls' row hooks
        config = AutoConfig.from_pretrained(path)
        self.max_rows = int(max_rows)
        self.max_model_len = int(max_model_len)
        # prompts of one group prefill in one step: room for max_rows prompts of 2 048 tokens
        self.max_batched_tokens = int(max_batched_tokens or max(self.max_model_len, self.max_rows * PROMPT_BUDGET))
        if isinstance(dtype, torch.dtype):
            dtype = str(dtype).removeprefix("torch.")
        per_token = _engine_bytes_per_token(config, dtype)
        rows_tokens = self.max_rows * (self.max_model_len + KV_MARGIN_TOKENS)
        self.kv_cache_bytes = int(kv_cache_bytes or rows_tokens * per_token)
        on_cuda = torch.cuda.is_available()
        kwargs: dict[str, Any] = dict(
            model=str(path),
            tokenizer=str(path),
            dtype=dtype,
            max_model_len=self.max_model_len,
            max_num_seqs=self.max_rows,
            max_num_batched_tokens=self.max_batched_tokens,
            kv_cache_memory_bytes=self.kv_cache_bytes,
            logits_processors=[_hook_processor_class(self.hooks)],
            enable_prefix_caching=True,
            distributed_executor_backend="uni",
            enforce_eager=(not on_cuda) if enforce_eager is None else enforce_eager,
            load_format="safetensors",  # never pickles (vLLM's "auto" falls back to .bin)
            seed=0,
        )
        if on_cuda and "gpu_memory_utilization" not in engine_kwargs:
            # with an explicit KV cache size vLLM only checks this share is free at start-up;
            # the DiT and VAE may already hold part of the GPU
            free, total = torch.cuda.mem_get_info()
            kwargs["gpu_memory_utilization"] = round(max(0.05, min(0.9, 0.9 * free / total)), 3)
        kwargs.update(engine_kwargs)
        with isolated_rng():
            self.llm = LLM(**kwargs)
        engine = self.llm.llm_engine
        self.vocab_size = int(engine.model_config.get_vocab_size())
        self.device = torch.device("cpu")  # where the planner's generators live (seeds only)
        self.block_size = int(engine.vllm_config.cache_config.block_size)
        blocks = getattr(engine.vllm_config.cache_config, "num_gpu_blocks", None)
        self.kv_tokens = int(blocks) * self.block_size if blocks else self.max_batched_tokens
        logger.info(
            "vLLM planner LM %s: %d rows x %d tokens, KV cache %.2f GB (%d tokens)",
            Path(path).name, self.max_rows, self.max_model_len, self.kv_cache_bytes / 1e9, self.kv_tokens,
        )

    # -- the LMBackend protocol --------------------------------------------------------------

    def target_stats(self, ids: Sequence[int], start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced log-probability and rank (1 = argmax, over the full vocabulary) of
        every token `ids[start:]` given the tokens before it, from vLLM's prompt logprobs of
        the raw logits: float32 [T] and long [T]."""
        from vllm import SamplingParams

        if not 0 < start <= len(ids):
            raise SongstepError(f"target start {start} outside the {len(ids)} ids")
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False, seed=0)
        with isolated_rng():
            (out,) = self.llm.generate([{"prompt_token_ids": list(ids)}], params, use_tqdm=False)
        log_probs, ranks = [], []
        for pos in range(start, len(ids)):
            entry = out.prompt_logprobs[pos][ids[pos]]
            log_probs.append(float(entry.logprob))
            ranks.append(int(entry.rank))
        return torch.tensor(log_probs, dtype=torch.float32), torch.tensor(ranks, dtype=torch.long)

    def release(self) -> int:
        """vLLM keeps its KV cache allocated for the engine's lifetime; only the prefix cache is
        dropped. Returns 0 (no bytes freed)."""
        self.llm.reset_prefix_cache()
        return 0

    # -- generation ----------------------------------------------------------------------------

    def groups(self, requests: Sequence[VLLMRequest]) -> list[list[VLLMRequest]]:
        """Split requests into groups that run as one batch from the first step to the last:
        rows ≤ `max_rows`, prompts ≤ the scheduler's token budget, full rows ≤ the KV cache."""
        out: list[list[VLLMRequest]] = []
        group: list[VLLMRequest] = []
        rows = prompt = kv = 0
        for req in requests:
            prompts = [req.prompt] + ([req.uncond_prompt] if req.uncond_prompt is not None else [])
            r_rows = len(prompts)
            r_prompt = sum(len(p) for p in prompts)
            r_kv = sum(self._blocks(len(p) + req.max_tokens) for p in prompts) * self.block_size
            longest = max(len(p) for p in prompts) + req.max_tokens
            if r_rows > self.max_rows:
                raise SongstepError(f"a CFG pair needs 2 rows; the vLLM backend has max_rows={self.max_rows}")
            if longest > self.max_model_len or r_kv > self.kv_tokens:
                raise SongstepError(
                    f"an LM request of {longest} tokens does not fit the vLLM engine "
                    f"(max_model_len {self.max_model_len}, KV cache {self.kv_tokens} tokens)"
                )
            if group and (rows + r_rows > self.max_rows or prompt + r_prompt > self.max_batched_tokens or kv + r_kv > self.kv_tokens):
                out.append(group)
                group, rows, prompt, kv = [], 0, 0, 0
            group.append(req)
            rows, prompt, kv = rows + r_rows, prompt + r_prompt, kv + r_kv
        if group:
            out.append(group)
        return out

    def _blocks(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def generate(
        self,
        requests: Sequence[VLLMRequest],
        sampling: dict[str, Any],
        hook: RowHook,
        *,
        stop_token_id: int,
        on_step: Callable[[], None] | None = None,
    ) -> list[VLLMOutput]:
        """Generate every request (in `groups`) with vLLM `SamplingParams(**sampling)` plus each
        request's seed and max_tokens; stops at `stop_token_id` only. Every step, `hook` gets
        the logits and the rows of the requests in the batch, by role `"cond:i"` / `"uncond:i"`
        (i: the request's index in `requests`). `on_step()` runs after every engine step; an
        exception from it aborts the group."""
        from vllm import SamplingParams

        key = uuid.uuid4().hex
        results = [VLLMOutput(tokens=[]) for _ in requests]
        index = {id(r): i for i, r in enumerate(requests)}
        engine = self.llm.llm_engine
        with isolated_rng(), self.hooks.active(key, hook):
            for group in self.groups(requests):
                ids: dict[str, tuple[int, str]] = {}
                try:
                    for req in group:
                        i = index[id(req)]
                        prompts = [(COND, req.prompt)]
                        if req.uncond_prompt is not None:
                            prompts.append((UNCOND, req.uncond_prompt))
                        for role, prompt in prompts:
                            rid = f"{key}-{i}-{role}"
                            params = SamplingParams(
                                **sampling,
                                seed=req.seed,
                                max_tokens=req.max_tokens,
                                ignore_eos=True,
                                stop_token_ids=[stop_token_id],
                                detokenize=False,
                                extra_args={KEY_ARG: key, ROLE_ARG: f"{role}:{i}"},
                            )
                            engine.add_request(rid, {"prompt_token_ids": list(prompt)}, params)
                            ids[rid] = (i, role)
                    while engine.has_unfinished_requests():
                        for out in engine.step():
                            if out.finished and out.request_id in ids:
                                i, role = ids[out.request_id]
                                tokens = list(out.outputs[0].token_ids)
                                if role == COND:
                                    results[i].tokens = tokens
                                else:
                                    results[i].uncond_tokens = tokens
                        if on_step is not None:
                            on_step()
                except BaseException:
                    engine.abort_request(list(ids))
                    while engine.has_unfinished_requests():  # drain the aborted requests
                        engine.step()
                    raise
        return results
