"""`Planner`: the 5 Hz LM as a song planner.

    planner = Planner.from_pretrained("checkpoints/acestep-5Hz-lm-1.7B")
    plan = planner.plan(GenerationRequest(caption="dreamy synth pop", lyrics="..."), seed=7)
    plan.request        # blanks filled (bpm, key, time signature, duration), audio_codes set
    planner.create_sample("a sad piano ballad about rain")   # simple mode → caption, lyrics, metas
    planner.understand_codes(plan.audio_codes)               # codes → caption, lyrics, metas
    planner.score(plan.audio_codes, caption=..., lyrics=...) # AutoScore

The planner knows nothing of the DiT or the VAE: turning audio into codes is the pipeline's job
(`Pipeline.audio_to_codes`), which hands the codes (or a callable making them) to `understand`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from songstep.constants import AUDIO_CODE_TOKEN, CODE_RATE, LANGUAGES, MAX_DURATION
from songstep.errors import InvalidRequest
from songstep.models.lm import PlannerLM, load_lm
from songstep.planner import phases, scoring
from songstep.planner.types import Plan, PlanOptions, Score, SongDescription, describe
from songstep.prompts import (
    ChatPrompt,
    build_format_prompt,
    build_inspiration_prompt,
    build_understand_prompt,
    format_cot,
    parse_lm_output,
    render_chat_prompt,
)
from songstep.request import GenerationRequest, normalize_timesignature, take_seeds
from songstep.sampling.grammar import CAPTION_MAX_TOKENS, GrammarVocab, MetadataConstraint, MetadataSpec
from songstep.sampling.lm import DecodeRow, SamplingParams, decode

logger = logging.getLogger(__name__)

GENRES_MAX_TOKENS = 64
COT_FIELDS_TOKENS = 128  # phase 1 without the caption: field names, values, newlines (~60)
MAX_MODEL_LEN = 4096  # upstream's LM context (vLLM backend); token caps derive from it


class FreeTextConstraint:
    """The unconstrained fallback for metadata phases: any token except audio codes; with
    `stop_at_think_end`, only EOS once `</think>` was sampled (upstream's stop-at-reasoning)."""

    greedy = False

    def __init__(self, lm: PlannerLM, vocab_size: int, *, stop_at_think_end: bool):
        free = torch.ones(vocab_size, dtype=torch.bool)
        free[lm.codes.first_id : lm.codes.first_id + lm.codes.count] = False
        eos = torch.zeros(vocab_size, dtype=torch.bool)
        eos[lm.eos_id] = True
        self._masks = {"free": free, "eos": eos}
        self._think_end = lm.think_ids[1]
        self._eos_id = lm.eos_id
        self._stop = stop_at_think_end
        self._state = "free"
        self.finished = False

    def allowed(self, device: torch.device | str = "cpu") -> torch.Tensor:
        mask = self._masks[self._state]
        if mask.device != torch.device(device):
            mask = self._masks[self._state] = mask.to(device)
        return mask

    def advance(self, token_id: int) -> None:
        if token_id == self._eos_id:
            self.finished = True
        elif token_id == self._think_end and self._stop:
            self._state = "eos"


def _seeds(seed: int | None, count: int) -> list[int]:
    return take_seeds(seed, count)


def _code_string(codes: str | Sequence[int]) -> str:
    if isinstance(codes, str):
        return codes.strip()
    return "".join(AUDIO_CODE_TOKEN.format(int(c)) for c in codes)


class Planner:
    """Plans songs with a loaded `PlannerLM` (one device; not thread-safe: the pipeline serialises
    its runs).

    `max_duration` bounds the durations the CoT may choose (the GPU tier's `max_duration_lm`);
    `caption_max_tokens` caps the CoT caption; `max_new_tokens` caps every free-text phase
    (default `max_model_len − 64`, upstream's cap)."""

    def __init__(
        self,
        lm: PlannerLM,
        *,
        max_duration: float = MAX_DURATION,
        caption_max_tokens: int = CAPTION_MAX_TOKENS,
        max_model_len: int = MAX_MODEL_LEN,
        max_new_tokens: int | None = None,
    ) -> None:
        self.lm = lm
        self.max_duration = float(max_duration)
        self.caption_max_tokens = int(caption_max_tokens)
        self.max_model_len = int(max_model_len)
        self.max_new_tokens = max_new_tokens
        self._vocab: GrammarVocab | None = None
        self._grammar_missing = False

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        backend: str = "transformers",
        vllm_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Planner:
        """Load an `acestep-5Hz-lm-*` folder on `backend` ("transformers" or "vllm", see
        `load_lm`); `kwargs` go to `Planner(...)`."""
        lm = load_lm(folder, device=device, dtype=dtype, backend=backend, vllm_options=vllm_options)
        return cls(lm, **kwargs)

    @property
    def name(self) -> str:
        return self.lm.path.name

    def release(self) -> int:
        """Free what the LM backend holds between requests (KV caches, CUDA graphs, vLLM's
        prefix cache); the bytes freed. The next plan allocates again."""
        return self.lm.backend.release()

    # -- shared helpers ----------------------------------------------------------------------
    def encode_prompt(self, prompt: ChatPrompt) -> list[int]:
        return self.lm.encode(render_chat_prompt(self.lm.tokenizer, prompt))

    def decode_text(self, tokens: Sequence[int]) -> str:
        return self.lm.tokenizer.decode(list(tokens), skip_special_tokens=False)

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.lm.backend.device).manual_seed(int(seed))

    def max_duration_for(self, opts: PlanOptions) -> float:
        return min(self.max_duration, opts.max_duration) if opts.max_duration else self.max_duration

    def text_token_cap(self, override: int | None = None) -> int:
        """New-token cap of a metadata/free-text phase."""
        cap = override or self.max_new_tokens or self.max_model_len - 64
        return max(1, int(cap))

    def cot_token_cap(self, constrained: bool, override: int | None = None) -> int:
        """Phase-1 cap: the grammar ends the block after at most `caption_max_tokens` caption
        tokens plus ~60 for the other fields, so the KV cache need not hold 4 k tokens."""
        cap = self.text_token_cap(override)
        if constrained and self.grammar_vocab() is not None:
            cap = min(cap, self.caption_max_tokens + COT_FIELDS_TOKENS)
        return cap

    def code_token_cap(self, target: int | None, opts: PlanOptions) -> int:
        """Code-phase cap: target + EOS, or (free count) the longest allowed song + EOS."""
        if target is not None:
            return target + 1
        free = int(self.max_duration_for(opts) * CODE_RATE) + 1  # never a song past the limit
        return min(free, self.max_model_len - 64)

    def grammar_vocab(self) -> GrammarVocab | None:
        """The llguidance view of the tokenizer (built once); None without the `grammar` extra."""
        if self._vocab is None and not self._grammar_missing:
            try:
                self._vocab = GrammarVocab.from_tokenizer(self.lm.tokenizer, self.lm.backend.vocab_size)
            except ImportError:
                self._grammar_missing = True
                logger.warning("llguidance is not installed (pip install 'songstep[grammar]'): "
                               "planner metadata is decoded without the grammar")
        return self._vocab

    def metadata_constraint(self, spec: MetadataSpec, constrained: bool = True):
        vocab = self.grammar_vocab() if constrained else None
        if vocab is not None:
            return MetadataConstraint(vocab, spec)
        return FreeTextConstraint(self.lm, self.lm.backend.vocab_size, stop_at_think_end=spec.ending != "text")

    # -- planning ----------------------------------------------------------------------------
    def plan(
        self,
        request: GenerationRequest,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        thinking: bool = True,
        options: PlanOptions | None = None,
        progress: StageProgress | None = None,
        **overrides: Any,
    ) -> Plan:
        """Plan one take. `overrides` are `PlanOptions` fields (use_cot_metas, use_cot_caption,
        use_cot_language, cfg_scale, temperature, top_p, top_k, negative_prompt, legacy_prompts,
        …). The seed is `seed`, else the request's, else random; a `generator` is used as is for
        both phases instead. `progress(stage, tokens, cap)` reports the decoding: stage "lm" for
        the metadata block, "lm-codes" for the audio codes."""
        opts = (options or PlanOptions()).replace(**overrides)
        if generator is not None:
            seeds, gens = [generator.initial_seed()], [generator]
        else:
            seeds, gens = _seeds(seed if seed is not None else request.seed, 1), None
        return self._plan(request, seeds, thinking, opts, gens, progress)[0]

    def plan_batch(
        self,
        request: GenerationRequest,
        *,
        seeds: Sequence[int] | None = None,
        thinking: bool = True,
        options: PlanOptions | None = None,
        progress: StageProgress | None = None,
        **overrides: Any,
    ) -> list[Plan]:
        """One plan per item of `request.batch` (or per seed given): seeds N, N+1, … from the
        request's seed; each item is an independent decode row (CFG rows batched). `progress`
        as in `plan`."""
        opts = (options or PlanOptions()).replace(**overrides)
        seeds = list(seeds) if seeds is not None else _seeds(request.seed, request.batch)
        return self._plan(request, seeds, thinking, opts, None, progress)

    def _plan(self, request, seeds, thinking, opts, gens, progress=None) -> list[Plan]:
        start = time.perf_counter()
        user = phases.user_metadata(request)
        outputs: list[tuple[str, Any]] = [("", None)] * len(seeds)
        if opts.use_cot_metas and phases.missing_fields(request):
            outputs = phases.run_phase1(self, request, gens or [self.generator(s) for s in seeds], opts,
                                        _stage(progress, "lm"))
        merged = [phases.merge_metadata(user, out, opts, self.max_duration_for(opts)) for _, out in outputs]
        codes = [""] * len(seeds)
        if thinking and self._codes_wanted(request, opts):
            items = [(md, (gens[i] if gens else self.generator(s))) for i, ((md, _), s) in enumerate(zip(merged, seeds))]
            codes = phases.run_phase2(self, request, items, opts, _stage(progress, "lm-codes"))
        plans = []
        for seed, (text, _), (md, lm_md), code in zip(seeds, outputs, merged, codes):
            filled = phases.fill_request(request, md, lm_md, opts, seed, code)
            plans.append(Plan(filled, seed, md, lm_md, code, format_cot(md), text + code))
        logger.info("planned %d take(s) in %.2f s (%s)", len(plans), time.perf_counter() - start,
                    "codes" if any(codes) else "metadata only")
        return plans

    def _codes_wanted(self, request: GenerationRequest, opts: PlanOptions) -> bool:
        if request.audio_codes:
            return False  # the user's codes are used as they are (upstream infer_type "dit")
        limit = self.max_duration_for(opts)
        if request.duration is not None and request.duration > limit:
            logger.warning("duration %.0f s is above the planner's %.0f s limit: no LM codes", request.duration, limit)
            return False
        return True

    # -- simple mode, format, understand -----------------------------------------------
    def _generate_text(self, prompt: ChatPrompt, spec: MetadataSpec, *, seed, generator, sampling: dict,
                       constrained: bool, max_new_tokens: int | None) -> str:
        ids = self.encode_prompt(prompt)
        gen = generator if generator is not None else self.generator(_seeds(seed, 1)[0])
        row = DecodeRow(ids, constraint=self.metadata_constraint(spec, constrained), generator=gen)
        lm = self.lm
        result = decode(lm.backend, [row], SamplingParams(**sampling), eos_id=lm.eos_id, pad_id=lm.pad_id,
                        max_new_tokens=self.text_token_cap(max_new_tokens))[0]
        return self.decode_text(result.tokens)

    def _text_spec(self, user: dict[str, Any], *, skip_language: bool = False) -> MetadataSpec:
        return MetadataSpec(user_values=user, skip_language=skip_language, include_genres=True, ending="text",
                            max_duration=int(self.max_duration), caption_max_tokens=self.caption_max_tokens,
                            genres_max_tokens=min(GENRES_MAX_TOKENS, self.caption_max_tokens))

    def create_sample(
        self,
        description: str,
        *,
        instrumental: bool = False,
        language: str | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        temperature: float = 0.85,
        top_p: float = 0.9,
        top_k: int = 0,
        constrained: bool = True,
        max_new_tokens: int | None = None,
    ) -> SongDescription:
        """Simple mode: one sentence → caption, lyrics, bpm, duration, key, time signature,
        language. One row, no CFG; a language other than `unknown` is forced into the CoT."""
        lang = _checked_language(language)
        text = self._generate_text(
            build_inspiration_prompt(description, instrumental), self._text_spec({"language": lang} if lang else {}),
            seed=seed, generator=generator, sampling=dict(temperature=temperature, top_p=top_p, top_k=top_k),
            constrained=constrained, max_new_tokens=max_new_tokens,
        )
        desc = describe(parse_lm_output(text), text, instrumental=instrumental)
        return _with(desc, language=lang) if lang else desc

    def format(
        self,
        caption: str,
        lyrics: str = "",
        *,
        bpm: int | None = None,
        keyscale: str | None = None,
        timesignature: str | None = None,
        duration: float | None = None,
        language: str | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        temperature: float = 0.85,
        top_p: float = 0.9,
        top_k: int = 0,
        constrained: bool = True,
        max_new_tokens: int | None = None,
    ) -> SongDescription:
        """Format mode: the user's caption and lyrics → an enhanced caption, formatted lyrics and
        the missing metas. Given metas are forced and kept; a given language is not generated."""
        lang = _checked_language(language)
        ts = normalize_timesignature(timesignature) if timesignature else None
        user = {k: v for k, v in dict(bpm=bpm, keyscale=keyscale, timesignature=ts).items() if v}
        if duration is not None and duration > 0:
            user["duration"] = int(duration)
        if lang:
            user["language"] = lang
        text = self._generate_text(
            build_format_prompt(caption, lyrics), self._text_spec(user, skip_language=bool(lang)),
            seed=seed, generator=generator, sampling=dict(temperature=temperature, top_p=top_p, top_k=top_k),
            constrained=constrained, max_new_tokens=max_new_tokens,
        )
        desc = describe(parse_lm_output(text), text, lyrics=lyrics if (lyrics or "").strip() else "[Instrumental]")
        return _with(desc, **user)

    def understand_codes(
        self,
        audio_codes: str | Sequence[int],
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        temperature: float = 0.85,
        top_p: float = 0.9,
        top_k: int = 0,
        constrained: bool = True,
        max_new_tokens: int | None = None,
    ) -> SongDescription:
        """Understand (transcribe): 5 Hz codes → caption, lyrics, metas, genres. No CFG."""
        codes = _code_string(audio_codes)
        if "<|audio_code_" not in codes:
            raise InvalidRequest("no audio codes to understand (expected <|audio_code_N|> tokens)")
        text = self._generate_text(
            build_understand_prompt(codes), self._text_spec({}),
            seed=seed, generator=generator, sampling=dict(temperature=temperature, top_p=top_p, top_k=top_k),
            constrained=constrained, max_new_tokens=max_new_tokens,
        )
        return describe(parse_lm_output(text), text)

    def understand(self, source: Any, *, encoder: Callable[[Any], str] | None = None, **kwargs: Any) -> SongDescription:
        """`understand_codes` for codes (a code string or ids); anything else (audio) is first
        turned into codes by `encoder` (the pipeline passes its `audio_to_codes`)."""
        is_codes = (isinstance(source, str) and "<|audio_code_" in source) or (
            isinstance(source, Sequence) and not isinstance(source, str) and all(isinstance(c, int) for c in source)
        )
        if not is_codes:
            if encoder is None:
                raise InvalidRequest("understanding audio needs an encoder to codes (use Pipeline.understand)")
            source = encoder(source)
        return self.understand_codes(source, **kwargs)

    # -- AutoScore ---------------------------------------------------------------------
    def score(
        self,
        audio_codes: str | Sequence[int],
        *,
        caption: str = "",
        lyrics: str = "",
        metadata: dict[str, Any] | None = None,
        scale: float = scoring.DEFAULT_SCALE,
        topk: int = scoring.TOPK,
    ) -> Score:
        """How well the codes match the conditions, from the LM's teacher-forced logits."""
        return scoring.score_codes(self, _code_string(audio_codes), caption=caption, lyrics=lyrics,
                                   metadata=metadata or {}, scale=scale, topk=topk)

    def rank(self, plans: Sequence[Plan], **kwargs: Any) -> list[tuple[int, Score]]:
        """(index, score) of every plan with codes, best first (ties keep the plan order)."""
        scored = []
        for i, plan in enumerate(plans):
            if not plan.audio_codes:
                raise InvalidRequest(f"plan {i} has no audio codes to score")
            md = {k: v for k, v in plan.metadata.items() if k != "caption"}
            scored.append((i, self.score(plan.audio_codes, caption=plan.request.caption,
                                         lyrics=plan.request.lyrics, metadata=md, **kwargs)))
        return sorted(scored, key=lambda item: -item[1].total)


def _checked_language(language: str | None) -> str | None:
    text = (language or "").strip()
    if not text or text.lower() == "unknown":
        return None
    if text not in LANGUAGES:
        raise InvalidRequest(f"unknown language {language!r}; use a code such as 'en'")
    return text


def _with(desc: SongDescription, **changes: Any) -> SongDescription:
    return dataclasses.replace(desc, **changes)


StageProgress = Callable[[str, int, int], None]  # (stage, done, total), as the pipeline's progress


def _stage(progress: StageProgress | None, stage: str):
    """A decode-level `(done, total)` callback reporting as `stage`."""
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)
