"""Adapter over the Qwen3 planner LM (`acestep-5Hz-lm-{0.6B,1.7B,4B}`), the planner of ACE-Step 1.5.

* `load_lm(path)` loads the folder through transformers (`AutoTokenizer`,
  `AutoModelForCausalLM`, never remote code; bf16 on CUDA, fp32 on CPU unless asked otherwise)
  and finds the audio-code token range (`AudioCodeVocab`).
* `LMBackend` is what every planner runtime implements, with its `LMCapabilities` declared;
  `StepwiseBackend` adds what the decode loop (`songstep.sampling.lm`) drives token by token:
  `prefill(ids, mask, max_new_tokens=, head=)` returns a session and the last-position logits;
  `session.step(tokens)` feeds one token per row and returns the next logits. Rows may be
  left-padded (CFG cond + uncond in one batch): position ids follow the attention mask.
  `head` restricts the LM head to some vocabulary rows (`HeadRows`): in the code phase only the
  64 000 valid code rows + EOS are multiplied, a [rows × hidden] matmul instead of the full vocab.
* `TransformersBackend` implements it: transformers' forward with a dynamic KV cache (CPU
  default), or on CUDA our static-shape Qwen3 runner (`songstep.models.lm_static`) with a
  preallocated cache, a compiled one-token step and CUDA graphs.
* `VLLMBackend` (`songstep.models.lm_vllm`, the `[vllm]` extra) is a `RequestBackend`: it runs
  whole requests on a vLLM engine; the decode loop steers each of its sampling steps through a
  row hook. It has no `prefill`/`logits` at all (its capabilities say so).
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from songstep.constants import AUDIO_CODE_COUNT, AUDIO_CODE_TOKEN, ENDOFTEXT, THINK_END, THINK_START
from songstep.errors import CheckpointError, SongstepError
from songstep.models.folders import check_finite, check_loading_info, component_folder
from songstep.models.lm_backend import (
    STEPWISE,
    WHOLE_REQUEST,
    HeadRows,
    LMBackend,
    LMCapabilities,
    LMSession,
    RequestBackend,
    StepwiseBackend,
    head_columns,
    stats_from_logits,
)
from songstep.models.lm_static import (
    StaticQwen3,
    StaticState,
    check_supported,
    positions_from_mask,
)

logger = logging.getLogger(__name__)

__all__ = [
    "STEPWISE", "WHOLE_REQUEST", "AudioCodeVocab", "HeadRows", "LMBackend", "LMCapabilities", "LMSession",
    "PlannerLM", "RequestBackend", "StepwiseBackend", "TransformersBackend", "head_columns", "load_lm",
    "stats_from_logits",
]

MAX_CODE_TOKENS = 65_535  # the official LMs add <|audio_code_0|> … <|audio_code_65534|>


@dataclass(frozen=True)
class AudioCodeVocab:
    """Where the audio-code tokens live: `<|audio_code_i|>` has id `first_id + i`.

    `count` is the number of code tokens in the tokenizer (65 535 in the official LMs), `valid`
    those that are real FSQ codes (`min(count, 64 000)`)."""

    first_id: int
    count: int
    eos_id: int

    @property
    def valid(self) -> int:
        return min(self.count, AUDIO_CODE_COUNT)

    def token_id(self, code: int) -> int:
        return self.first_id + code

    def code(self, token_id: int) -> int:
        """Code index of a token id (may be ≥ `valid` for the 1 535 unused code tokens)."""
        return token_id - self.first_id

    def is_code(self, token_id: int) -> bool:
        return self.first_id <= token_id < self.first_id + self.count

    def head_rows(self) -> HeadRows:
        """The code phase's head: the valid code rows, then EOS (column `valid`)."""
        return ((self.first_id, self.first_id + self.valid), (self.eos_id, self.eos_id + 1))


def find_audio_codes(tokenizer: Any) -> AudioCodeVocab:
    """Locate `<|audio_code_0|>` … in `tokenizer` and verify the ids are consecutive.

    Raises `CheckpointError` when there is no code token, the ids are not consecutive, or the
    tokenizer has no EOS."""
    vocab = tokenizer.get_vocab()
    first = vocab.get(AUDIO_CODE_TOKEN.format(0))
    if first is None:
        raise CheckpointError(f"tokenizer has no {AUDIO_CODE_TOKEN.format(0)} token: not a 5 Hz LM tokenizer")
    count = 0
    while count < MAX_CODE_TOKENS and (tid := vocab.get(AUDIO_CODE_TOKEN.format(count))) is not None:
        if tid != first + count:
            raise CheckpointError(
                f"audio-code token ids are not consecutive: {AUDIO_CODE_TOKEN.format(count)} has id {tid}, "
                f"expected {first + count}"
            )
        count += 1
    prefix = AUDIO_CODE_TOKEN.split("{")[0]
    total = sum(1 for token in vocab if token.startswith(prefix))
    if total != count:
        raise CheckpointError(f"{total} audio-code tokens but only codes 0..{count - 1} are consecutive")
    if tokenizer.eos_token_id is None:
        raise CheckpointError("the LM tokenizer has no eos token")
    if count < MAX_CODE_TOKENS:
        logger.info("tokenizer holds %d audio-code tokens (official LMs: %d)", count, MAX_CODE_TOKENS)
    return AudioCodeVocab(first_id=first, count=count, eos_id=int(tokenizer.eos_token_id))


def pad_left(sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"):
    """Left-pad token lists into `(input_ids, attention_mask)` long tensors [B, L]."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise SongstepError("every prompt needs at least one token")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    return ids.to(device), mask.to(device)


class TransformersBackend:
    """`StepwiseBackend` over a transformers `Qwen3ForCausalLM`.

    Two runners, chosen by `static_cache` (default: on CUDA, for configs the static runner
    supports):

    * off: transformers' own `model.model(...)` with a `DynamicCache` per session (the CPU default;
      any architecture transformers runs).
    * on: `StaticQwen3` (`songstep.models.lm_static`), our Qwen3 over the same parameters with a
      preallocated KV cache per (batch, length bucket), reused across generations; only the latest
      session of a bucket is live (older ones raise). `compile` (default: on CUDA with the static
      runner) compiles its one-token step with `torch.compile(fullgraph=True)`; `cuda_graph`
      (default: same) captures the step in a CUDA graph per bucket. Failures fall back to eager
      (logged once). Scoring (`logits`) always goes through transformers.

    The runner is built on first use, from the parameters the model holds then.
    """

    capabilities = STEPWISE

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        static_cache: bool | None = None,
        compile: bool | None = None,
        cuda_graph: bool | None = None,
    ):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.vocab_size = int(model.config.vocab_size)
        on_cuda = self.device.type == "cuda"
        self.static_cache = on_cuda if static_cache is None else static_cache
        if static_cache is None and on_cuda:
            try:
                check_supported(model)
            except NotImplementedError as exc:
                logger.warning("static LM runner unavailable (%s); using transformers' forward", exc)
                self.static_cache = False
        self.compile = (on_cuda and self.static_cache) if compile is None else compile
        self.cuda_graph = (on_cuda and self.static_cache) if cuda_graph is None else cuda_graph and on_cuda
        if (self.compile or self.cuda_graph) and not self.static_cache:
            logger.warning("torch.compile / CUDA graphs of the LM step need the static runner; both off")
            self.compile = self.cuda_graph = False
        self._weight = model.get_output_embeddings().weight
        # transformers ≥ 5.2x names the KV-cache argument `cache` (earlier: `past_key_values`)
        params = inspect.signature(model.model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._runner: StaticQwen3 | None = None

    @property
    def runner(self) -> StaticQwen3:
        """The static runner (built on first use)."""
        if self._runner is None:
            self._runner = StaticQwen3(self.model, compile=self.compile, cuda_graph=self.cuda_graph)
        return self._runner

    def _forward_hidden(self, ids, mask, positions, cache):
        kwargs = {self._cache_kwarg: cache}
        out = self.model.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs
        )
        return out.last_hidden_state[:, -1]

    def head(self, hidden: torch.Tensor, rows: HeadRows | None = None) -> torch.Tensor:
        """float32 logits of `hidden` [B, H] over all rows, or only over `rows` (views of the
        weight; no copy)."""
        if rows is None:
            return torch.nn.functional.linear(hidden, self._weight).float()
        parts = [torch.nn.functional.linear(hidden, self._weight[a:b]) for a, b in rows]
        return torch.cat(parts, dim=-1).float()

    @torch.inference_mode()
    def prefill(self, input_ids, attention_mask, *, max_new_tokens, head=None):
        ids, mask = input_ids.to(self.device), attention_mask.to(self.device)
        if self.static_cache:
            state, hidden = self.runner.prefill(ids, mask, max_new_tokens)
            return _StaticSession(self, state, head), self.head(hidden, head)
        from transformers import DynamicCache

        batch, length = ids.shape
        cache = DynamicCache(config=self.model.config)
        mask_buf = torch.zeros((batch, length + max_new_tokens), dtype=torch.long, device=self.device)
        mask_buf[:, :length] = mask
        positions = positions_from_mask(mask)
        hidden = self._forward_hidden(ids, mask_buf[:, :length], positions, cache)
        session = _HFSession(self, cache, mask_buf, positions[:, -1:].clone(), length, head)
        return session, self.head(hidden, head)

    def release(self) -> int:
        if self._runner is None:
            return 0
        return self._runner.release()

    def target_stats(self, ids: Sequence[int], start: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 < start <= len(ids):
            raise SongstepError(f"target start {start} outside the {len(ids)} ids")
        logits = self.logits(torch.tensor([list(ids)], dtype=torch.long))[0]
        return stats_from_logits(logits[start - 1 : -1].cpu(), torch.tensor(list(ids[start:]), dtype=torch.long))

    @torch.inference_mode()
    def logits(self, input_ids, attention_mask=None):
        ids = input_ids.to(self.device)
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask.to(self.device)
        out = self.model.model(
            input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), use_cache=False
        )
        return torch.nn.functional.linear(out.last_hidden_state, self._weight).float()


@dataclass
class _HFSession:
    backend: TransformersBackend
    cache: Any  # transformers DynamicCache
    mask_buf: torch.Tensor
    positions: torch.Tensor  # [B, 1] position of the last fed token
    length: int  # tokens in the cache
    head_rows: HeadRows | None = None

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.length >= self.mask_buf.shape[1]:
            raise SongstepError(f"LM session is full ({self.length} tokens); raise max_new_tokens")
        ids = tokens.to(self.backend.device, torch.long).view(-1, 1)
        self.mask_buf[:, self.length] = 1
        self.positions += 1
        self.length += 1
        hidden = self.backend._forward_hidden(
            ids, self.mask_buf[:, : self.length], self.positions, self.cache
        )
        return self.backend.head(hidden, self.head_rows)


@dataclass
class _StaticSession:
    backend: TransformersBackend
    state: StaticState
    head_rows: HeadRows | None = None

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.backend.runner.step(self.state, tokens.to(self.backend.device, torch.long))
        return self.backend.head(hidden, self.head_rows)


class MissingExtra(ImportError, SongstepError):
    """An optional dependency group is not installed."""


@dataclass
class PlannerLM:
    """A loaded planner LM: tokenizer, model, backend and the ids the sampler needs."""

    tokenizer: Any
    model: torch.nn.Module | None  # None on the vLLM backend (the engine holds the weights)
    backend: StepwiseBackend | RequestBackend
    codes: AudioCodeVocab
    path: Path

    @property
    def eos_id(self) -> int:
        return self.codes.eos_id

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else int(self.tokenizer.convert_tokens_to_ids(ENDOFTEXT))

    @property
    def think_ids(self) -> tuple[int, int]:
        return tuple(int(self.tokenizer.convert_tokens_to_ids(t)) for t in (THINK_START, THINK_END))

    def encode(self, text: str) -> list[int]:
        """Token ids of a rendered prompt (no BOS/EOS added)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))


def default_device_dtype(device: str | torch.device | None, dtype: torch.dtype | None):
    dev = (
        torch.device(device)
        if device is not None
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    return dev, dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)


def load_lm(
    path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    backend: str = "transformers",
    static_cache: bool | None = None,
    compile: bool | None = None,
    cuda_graph: bool | None = None,
    vllm_options: dict[str, Any] | None = None,
) -> PlannerLM:
    """Load an `acestep-5Hz-lm-*` folder (or `write_tiny_lm` output).

    `backend`: "transformers" (default) or "vllm" (`VLLMBackend`, options in `vllm_options`,
    e.g. `max_rows`, `max_model_len`, `kv_cache_bytes`; the engine picks its own device).
    `static_cache`, `compile` and `cuda_graph` choose the transformers runner (see
    `TransformersBackend`). Raises `ModelNotFound` for a missing folder, `CheckpointError` for an
    unusable one, `MissingExtra` for `backend="vllm"` without vllm."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if backend not in ("transformers", "vllm"):
        raise CheckpointError(f"unknown LM backend {backend!r} (use 'transformers' or 'vllm')")
    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise MissingExtra("the vLLM backend needs the vllm extra: pip install 'songstep[vllm]'")
    dev, dt = default_device_dtype(device, dtype)
    if backend == "vllm":
        return _load_vllm(path, dt, vllm_options or {})
    with component_folder(path, "planner LM") as root:
        tokenizer = AutoTokenizer.from_pretrained(root, trust_remote_code=False, local_files_only=True)
        model, info = AutoModelForCausalLM.from_pretrained(root, dtype=dt, trust_remote_code=False, local_files_only=True,
                                                           use_safetensors=True, output_loading_info=True, ignore_mismatched_sizes=True)
    check_loading_info(info, root, "planner LM")
    check_finite(model.state_dict().items(), f"planner LM at {root}")
    if getattr(model.config, "model_type", "") != "qwen3":
        logger.warning("LM at %s is %r, expected a qwen3 model", root, model.config.model_type)
    codes = find_audio_codes(tokenizer)
    _check_vocab(model.config.vocab_size, codes)
    model = model.to(dev).eval()
    lm_backend = TransformersBackend(model, static_cache=static_cache, compile=compile, cuda_graph=cuda_graph)
    logger.info("loaded LM %s on %s (%s), codes at ids %d..", root.name, dev, dt, codes.first_id)
    return PlannerLM(tokenizer=tokenizer, model=model, backend=lm_backend, codes=codes, path=root)


def _check_vocab(vocab_size: int, codes: AudioCodeVocab) -> None:
    if vocab_size < codes.first_id + codes.count:
        raise CheckpointError(
            f"model vocab {vocab_size} is smaller than the tokenizer's audio codes "
            f"(up to id {codes.first_id + codes.count - 1})"
        )


def _load_vllm(path: str | Path, dtype: torch.dtype, options: dict[str, Any]) -> PlannerLM:
    from transformers import AutoTokenizer

    from songstep.models.lm_vllm import VLLMBackend

    options = dict(options)
    with component_folder(path, "planner LM") as root:
        tokenizer = AutoTokenizer.from_pretrained(root, trust_remote_code=False)
        codes = find_audio_codes(tokenizer)
        backend = VLLMBackend(root, dtype=options.pop("dtype", dtype), **options)
    _check_vocab(backend.vocab_size, codes)
    logger.info("loaded LM %s on vLLM, codes at ids %d..", root.name, codes.first_id)
    return PlannerLM(tokenizer=tokenizer, model=None, backend=backend, codes=codes, path=root)
