"""`Pipeline`: the library API (spec pipeline.md §3).

    pipe = Pipeline.from_pretrained("ACE-Step/Ace-Step1.5")           # or a local checkpoints dir
    result = pipe.generate(caption="lofi hip hop", lyrics="[Instrumental]", duration=60, seed=7)
    result.audio  # [batch, 2, samples] float32 at 48 kHz

Every task method builds a `GenerationRequest` and runs it through `run()`: validate → plan →
condition → sample → decode → post-process. With a planner LM loaded (`lm=`), text2music requests
are planned first (`songstep.pipeline.planning`); `understand`, `audio_to_codes`, `score_takes`
and `autogen` are the planner's other uses.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from songstep import audio
from songstep.conditioning import repaint_settings, validate_request
from songstep.config import GenerationRequest, variant_defaults
from songstep.constants import AUDIO_CODE_TOKEN, HOP_LENGTH, SAMPLE_RATE
from songstep.errors import InvalidRequest, OutOfMemory
from songstep.pipeline import planning
from songstep.pipeline.autogen import AutoGen
from songstep.pipeline.components import Components, load_components, resolve_lm
from songstep.pipeline.inputs import Prepared, generators, load_wave, prepare, resolve_seeds
from songstep.pipeline.tiers import Tier, detect_tier
from songstep.planner import Planner, PlanOptions, Score, SongDescription
from songstep.planner.core import StageProgress
from songstep.sampling.dcw import DCWOptions
from songstep.sampling.dit import generate_latents
from songstep.sampling.flow import SamplerOptions
from songstep.sampling.noise import NoiseStream, draw_noise, mix_retake

log = logging.getLogger(__name__)

Progress = StageProgress  # (stage, done, total): the planner reports through the same callback


@dataclass
class GenerationResult:
    """One request's takes: `audio[i]` was made with `seeds[i]` and can be reproduced alone."""

    audio: torch.Tensor  # [B, 2, samples] float32
    sample_rate: int
    seeds: list[int]
    params: dict[str, Any]  # the full effective parameters (request + defaults + derived)
    timings: dict[str, float] = field(default_factory=dict)
    latents: torch.Tensor | None = None

    @property
    def duration(self) -> float:
        return self.audio.shape[-1] / self.sample_rate


def sampler_options(request: GenerationRequest, dit_config, variant: str | None = None) -> SamplerOptions:
    d = variant_defaults(dit_config, variant)
    settings = repaint_settings(request.repaint_strength)
    return SamplerOptions(
        steps=request.steps if request.steps is not None else d.steps,
        shift=request.shift if request.shift is not None else d.shift,
        timesteps=request.timesteps,
        method=request.method,
        solver=request.solver,
        guidance_scale=d.guidance if dit_config.is_turbo or request.guidance is None else float(request.guidance),
        guidance=request.guidance_method,
        cfg_interval=tuple(request.cfg_interval),
        cover_strength=request.strength,
        cover_noise_strength=request.cover_noise_strength,
        repaint_injection_ratio=settings.injection_ratio,
        repaint_crossfade_frames=settings.crossfade_frames,
        dcw=DCWOptions(enabled=request.dcw),
    )


def splice(generated: torch.Tensor, source: torch.Tensor, window: tuple[int, int], crossfade_s: float) -> torch.Tensor:
    """Keep the source outside the window (frames → samples), with linear ramps of
    `crossfade_s` seconds outside each window edge (spec pipeline.md §4.3 step 3)."""
    n = generated.shape[-1]
    m = torch.zeros(n)
    a, b = window[0] * HOP_LENGTH, min(window[1] * HOP_LENGTH, n)
    m[a:b] = 1.0
    ramp = int(round(crossfade_s * SAMPLE_RATE))
    if ramp > 0:
        lo = max(0, a - ramp)
        m[lo:a] = torch.linspace(0, 1, a - lo + 2)[1:-1]
        hi = min(n, b + ramp)
        m[b:hi] = torch.linspace(1, 0, hi - b + 2)[1:-1]
    src = audio.pad_or_trim(source, n).to(generated)
    return m.to(generated) * generated + (1 - m.to(generated)) * src


class Pipeline:
    """DiT + VAE + text encoder (+ planner), on one device, ready to run requests. Runs are
    serialised by a lock (AutoGen generates in a background thread)."""

    def __init__(self, components: Components, tier: Tier, planner: Planner | None = None) -> None:
        self.components = components
        self.tier = tier
        self.planner = planner
        self._lock = threading.RLock()

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path = "ACE-Step/Ace-Step1.5",
        *,
        variant: str = "turbo",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        offload: bool | None = None,
        root: str | Path = "checkpoints",
        offline: bool = False,
        tier: Tier | None = None,
        lm: str | Path | None = "auto",
        lm_backend: str = "transformers",
        vllm_options: dict | None = None,
        compile: bool | str = False,
        quantize: str | None = None,
    ) -> Pipeline:
        """Load from a local checkpoints directory or a hub repository (downloaded into `root`).
        `offload=None` follows the GPU tier picked from free memory (≤ 12 GB: offload).
        `lm`: the planner — "auto" (the tier's size; none on CPU or ≤ 6 GB), "none", "0.6B",
        "1.7B", "4B" or an LM folder; `lm_backend`: "transformers" or "vllm" (the `[vllm]`
        extra; `vllm_options` go to `VLLMBackend`). `compile` (True or a backend name) and
        `quantize` ("int8") optimise the DiT (see `load_components`)."""
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        tier = tier or detect_tier(dev)
        offload = tier.offload if offload is None else offload
        components = load_components(
            model, variant=variant, device=dev, dtype=dtype, offload=offload, root=root, offline=offline,
            compile=compile, quantize=quantize,
        )
        folder = resolve_lm(model, lm, tier.lm, root, offline)
        planner = None
        if folder is not None:
            planner = Planner.from_pretrained(
                folder, device=dev, dtype=dtype, max_duration=tier.max_duration_lm, backend=lm_backend,
                vllm_options=vllm_options,
            )
        return cls(components, tier, planner)

    # -- task methods ------------------------------------------------------------------------
    def generate(self, caption: str = "", lyrics: str = "", *, duration: float | None = None, **kw) -> GenerationResult:
        """A new song (text2music) from a caption and lyrics."""
        return self.run(GenerationRequest(task="text2music", caption=caption, lyrics=lyrics, duration=duration, **_req(kw)), **_run(kw))

    def cover(self, source, caption: str = "", *, strength: float = 1.0, **kw) -> GenerationResult:
        """Restyle `source`: strength is the share of the steps that follow its structure."""
        return self.run(GenerationRequest(task="cover", source_audio=source, caption=caption, strength=strength, **_req(kw)), **_run(kw))

    def repaint(self, source, start: float, end: float | None, caption: str = "", **kw) -> GenerationResult:
        """Regenerate [start, end) seconds; a negative start or an end past the source extends it."""
        req = GenerationRequest(task="repaint", source_audio=source, repaint_start=start, repaint_end=end, caption=caption, **_req(kw))
        return self.run(req, **_run(kw))

    def add_layer(self, source, track: str, caption: str = "", **kw) -> GenerationResult:
        """Add one instrument track to `source` (upstream "lego"; needs a base/sft model)."""
        return self.run(GenerationRequest(task="lego", source_audio=source, tracks=(track,), caption=caption, **_req(kw)), **_run(kw))

    def extract(self, source, track: str, **kw) -> GenerationResult:
        """Isolate one track (stem) of `source` (needs a base/sft model)."""
        return self.run(GenerationRequest(task="extract", source_audio=source, tracks=(track,), **_req(kw)), **_run(kw))

    def complete(self, source, tracks, caption: str = "", **kw) -> GenerationResult:
        """Write the accompaniment for a single track, e.g. a vocal (Vocal2BGM)."""
        tracks = (tracks,) if isinstance(tracks, str) else tuple(tracks)
        return self.run(GenerationRequest(task="complete", source_audio=source, tracks=tracks, caption=caption, **_req(kw)), **_run(kw))

    # -- the one code path -----------------------------------------------------------------------
    def run(
        self,
        request: GenerationRequest,
        *,
        generator: torch.Generator | list[torch.Generator] | None = None,
        progress: Progress | None = None,
        normalize: bool | None = None,
        loudness: float | None = None,
        thinking: bool | None = None,
        plan_options: PlanOptions | None = None,
    ) -> GenerationResult:
        """Run one request. With a planner loaded, `thinking` (default on) makes the LM write
        audio codes for text2music, and missing bpm/key/time signature/duration are filled from
        its CoT either way (`plan_options` tunes it); without a planner both are ignored.

        Level: by default each take is peak-normalised to −1 dBFS (repaint keeps the source's
        level); `normalize=False` turns that off; `loudness=-14.0` instead scales each take to
        that integrated loudness in LUFS (ITU-R BS.1770, needs `pyloudnorm`), peaks limited to 0 dBFS.

        `progress(stage, done, total)` is called per DiT step ("dit"), after the VAE decode ("vae") and
        every few LM tokens ("lm", "lm-codes"). It may raise (e.g. `songstep.errors.Cancelled`)
        to stop the run there: the exception propagates and the pipeline is free for the next run."""
        if loudness is not None:
            audio.check_loudness_target(loudness)
        level = _Level(normalize, loudness)
        with self._lock:
            spec = validate_request(request, self.components.dit.config)
            think = True if thinking is None else bool(thinking)
            run_lm, codes = planning.planner_steps(request, spec, think)
            if self.planner is None or not run_lm:
                if thinking and self.planner is None:
                    log.info("thinking requested but no planner LM is loaded (lm=...)")
                return self._generate(request, generator=generator, progress=progress, level=level)
            return self._run_planned(request, generator, progress, level, codes, plan_options)

    def _run_planned(self, request, generator, progress, level, codes, options) -> GenerationResult:
        t0 = time.perf_counter()
        seeds = _seeds(request, generator)
        plans = planning.plan_takes(self.planner, request, seeds, codes=codes, options=options, tier=self.tier,
                                    progress=progress)
        if self.components.offload:  # small GPUs: the LM's KV cache makes room for the DiT and VAE
            self.planner.lm.backend.release()
        lm_seconds = time.perf_counter() - t0
        gens = planning.item_generators(generator, len(plans))
        results = [
            self._generate(plan.request, generator=g, progress=progress, level=level)
            for plan, g in zip(plans, gens)
        ]
        return GenerationResult(**planning.combine(
            request, plans, results, planner=self.planner, options=options, codes=codes, lm_seconds=lm_seconds
        ))

    def _generate(self, request: GenerationRequest, *, generator, progress, level: _Level) -> GenerationResult:
        """One take set through the DiT and VAE. Out of GPU memory, it frees what it can (the
        planner LM's KV cache, the allocator's cache) and retries once with the generators'
        states restored (the same seeds give the same audio); a second failure is `OutOfMemory`
        with what to change."""
        gens = [g for g in planning.item_generators(generator, 1) if g is not None]
        states = [g.get_state() for g in gens]
        try:
            return self._generate_once(request, generator=generator, progress=progress, level=level)
        except OOM_ERRORS:
            log.warning("out of GPU memory; freed %.2f GiB of planner KV cache and retrying once", self._free() / 2**30)
        for g, state in zip(gens, states):
            g.set_state(state)
        try:
            return self._generate_once(request, generator=generator, progress=progress, level=level)
        except OOM_ERRORS as exc:
            raise OutOfMemory(
                f"out of GPU memory for {request.batch} take(s) of {request.duration or 'the planned'} s "
                f"({self.tier.name} tier): lower the batch or the duration, load with offload=True, "
                "or use a smaller planner LM (lm='0.6B' or 'none')"
            ) from exc

    def _free(self) -> int:
        """Free GPU memory held between runs; the bytes of planner KV cache freed."""
        freed = self.planner.lm.backend.release() if self.planner is not None else 0
        if self.components.device.type == "cuda":
            torch.cuda.empty_cache()
        return freed

    def _generate_once(self, request: GenerationRequest, *, generator, progress, level: _Level) -> GenerationResult:
        c = self.components
        spec = validate_request(request, c.dit.config)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        seeds = _seeds(request, generator)
        prep = prepare(c, request, spec, seeds)
        timings["prepare"] = time.perf_counter() - start
        timings.update(prep.timings)
        latents = self._sample(prep, request, generator, progress, timings)
        wave, fallback = self._decode(prep, latents, timings, progress)
        keep_level = prep.repaint is not None
        wave = level.apply(wave, keep_level=keep_level)
        timings["total"] = time.perf_counter() - start
        params = {**self._params(request, prep), **level.params(keep_level=keep_level)}
        if fallback:
            params["vae_decode"] = fallback
        return GenerationResult(wave, SAMPLE_RATE, seeds, params, timings, latents)

    # -- the planner's other uses --------------------------------------------------------------
    def _require_planner(self) -> Planner:
        if self.planner is None:
            raise InvalidRequest("no planner LM is loaded: load the pipeline with lm='1.7B' (or 0.6B, 4B, a folder)")
        return self.planner

    def audio_to_codes(self, source, *, seed: int | None = None) -> str:
        """Audio (a path or a [2, S] 48 kHz tensor) → 5 Hz code string: VAE latents (posterior
        mean, or a sample drawn with `seed`) → `DiTModel.tokenize` → one code per 5 frames
        (the last window padded with silence, so ceil(frames / 5) codes)."""
        c = self.components
        wave = load_wave(source)
        if wave.shape[1] < HOP_LENGTH:
            raise InvalidRequest("the audio is shorter than one latent frame (40 ms)")
        with self._lock:
            gens = generators([seed], c.vae.device) if seed is not None else None
            with c.on_device("vae"):
                latents = c.vae.encode(wave[None], gens, sample=seed is not None)
            x = latents.to(device=c.silence.device, dtype=c.dit.dtype)
            mask = torch.ones(x.shape[:2], device=x.device)
            with c.on_device("dit"), torch.no_grad():
                _q, indices, _m = c.dit.tokenize(x, c.silence[None], mask)
        return "".join(AUDIO_CODE_TOKEN.format(int(i)) for i in indices[0, :, 0].tolist())

    def understand(self, source, *, seed: int | None = None, **kwargs) -> SongDescription:
        """Audio or codes → caption, lyrics, bpm, key, time signature, duration, language
        (`Planner.understand_codes` options in `kwargs`)."""
        planner = self._require_planner()
        with self._lock:
            return planner.understand(source, encoder=lambda audio: self.audio_to_codes(audio, seed=seed), seed=seed, **kwargs)

    def create_sample(self, description: str, **kwargs) -> SongDescription:
        """Simple mode (see `Planner.create_sample`); `result.to_request()` makes it a request."""
        planner = self._require_planner()
        with self._lock:
            return planner.create_sample(description, **kwargs)

    def score_takes(self, result: GenerationResult, **kwargs) -> list[Score]:
        """AutoScore of every take (`Planner.score` options in `kwargs`): its planned codes, or
        codes made from its audio, against its caption, the lyrics and its metas."""
        planner = self._require_planner()
        items = result.params.get("items") or [result.params] * len(result.seeds)
        scores = []
        for i, item in enumerate(items):
            codes = item.get("audio_codes") or self.audio_to_codes(result.audio[i])
            metas = {k: item.get(k) for k in ("bpm", "keyscale", "timesignature", "duration")}
            if item.get("language") not in (None, "", "unknown"):
                metas["language"] = item["language"]
            with self._lock:
                scores.append(planner.score(codes, caption=item.get("caption") or "",
                                            lyrics=result.params.get("lyrics") or "", metadata=metas, **kwargs))
        return scores

    def autogen(self, request: GenerationRequest, *, after: GenerationResult | None = None, **run_kwargs) -> AutoGen:
        """Start the next batch of `request` in a background thread (upstream's AutoGen) and
        return its handle. Its seeds follow `after`'s last seed, else the request's own batch
        (seed N, batch B → N+B, …), else are random. `run_kwargs` go to `run()`."""
        if after is not None:
            first = after.seeds[-1] + 1
        elif request.seed is not None:
            first = int(request.seed) + request.batch
        else:
            first = resolve_seeds(None, 1)[0]
        return AutoGen(self.run, request.replace(seed=first % 2**63), run_kwargs, self._lock)

    def _sample(self, prep: Prepared, request, generator, progress, timings) -> torch.Tensor:
        c, t0 = self.components, time.perf_counter()
        options = sampler_options(request, c.dit.config, c.variant)
        dev, dtype = c.silence.device, c.dit.dtype
        gens = generator if generator is not None else generators(prep.seeds, dev)
        if isinstance(gens, torch.Generator):
            gens = [gens]
        shape = (len(prep.seeds), prep.plan.dit_frames, c.dit.config.audio_acoustic_hidden_dim)
        noise = draw_noise(shape, gens, device=dev, dtype=dtype)
        if request.retake_variance > 0:
            retake = resolve_seeds(request.retake_seed, len(prep.seeds))
            noise = mix_retake(noise, draw_noise(shape, generators(retake, dev), device=dev, dtype=dtype), request.retake_variance)

        def step(done: int, total: int) -> None:
            if progress is not None:
                progress("dit", done, total)

        with c.on_device("dit"):
            latents = generate_latents(
                c.dit, prep.inputs, noise, options, non_cover_text=prep.non_cover_text,
                repaint=prep.repaint, sde_noise=NoiseStream(gens), progress=step,
            )
        timings["dit"] = time.perf_counter() - t0
        return latents[:, : prep.plan.frames]

    def _decode(self, prep: Prepared, latents: torch.Tensor, timings, progress) -> tuple[torch.Tensor, str | None]:
        t0 = time.perf_counter()
        if not torch.isfinite(latents).all():
            raise RuntimeError("the DiT produced NaN/Inf latents")
        wave, fallback = self._vae_decode(latents)
        if progress is not None:
            progress("vae", 1, 1)
        if prep.repaint is not None and prep.source_wave is not None and prep.plan.window is not None:
            wave = torch.stack([splice(w, prep.source_wave, prep.plan.window, prep.wave_crossfade) for w in wave])
        timings["vae"] = time.perf_counter() - t0
        return wave, fallback

    def _vae_decode(self, latents: torch.Tensor) -> tuple[torch.Tensor, str | None]:
        """VAE decode with upstream's fallbacks when the GPU runs out of memory (features.md §7,
        pain point #747: degrade, do not abort): the whole batch with the default tiles, then
        one take at a time, then one take at a time with 256-frame tiles (same 64-frame overlap,
        so the same audio up to float rounding), then on the CPU. Returns the wave and, when a
        fallback was used, which one."""
        c = self.components
        attempts = [(None, {}), ("per take", {}), ("per take, 256-frame tiles", {"chunk_frames": 256})]
        for label, tiles in attempts:
            try:
                with c.on_device("vae"):
                    if label is None:
                        return c.vae.decode(latents, output_device="cpu"), None
                    parts = [c.vae.decode(z[None], output_device="cpu", **tiles) for z in latents]
                    return torch.cat(parts), label
            except OOM_ERRORS:
                log.warning("VAE decode out of GPU memory (%s); freeing memory and trying smaller pieces", label or "batch")
                self._free()
        log.warning("VAE decode out of GPU memory; decoding on the CPU (slow)")
        device = c.vae.device
        c.vae.model.to("cpu")
        try:
            return c.vae.decode(latents, output_device="cpu"), "cpu"
        finally:
            c.vae.model.to(device)

    def _params(self, request: GenerationRequest, prep: Prepared) -> dict[str, Any]:
        c = self.components
        options = sampler_options(request, c.dit.config, c.variant)
        req = {k: v for k, v in dataclasses.asdict(request).items() if k not in ("source_audio", "reference_audio")}
        for key in ("source_audio", "reference_audio"):
            value = getattr(request, key)
            req[key] = str(value) if isinstance(value, str | Path) else (None if value is None else "<tensor>")
        return {
            **req,
            "task": prep.spec.name,
            "model": c.variant,
            "instruction": prep.plan.instruction,
            "frames": prep.plan.frames,
            "seconds": prep.plan.seconds,
            "sampler": {k: v for k, v in dataclasses.asdict(options).items()},
            **prep.prompts,
        }


OOM_ERRORS = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),)  # torch.OutOfMemoryError: ≥ 2.5
_RUN_KEYS = ("generator", "progress", "normalize", "loudness", "thinking", "plan_options")


@dataclasses.dataclass(frozen=True)
class _Level:
    """The output level rule of one run: a loudness target wins over peak normalisation."""

    normalize: bool | None
    loudness: float | None

    def peak(self, keep_level: bool) -> bool:
        return self.normalize if self.normalize is not None else not keep_level

    def apply(self, wave: torch.Tensor, *, keep_level: bool) -> torch.Tensor:
        wave = torch.stack([audio.anti_clip(w) for w in wave])
        if self.loudness is not None:
            return audio.loudness_normalize(wave, self.loudness)
        return torch.stack([audio.peak_normalize(w) for w in wave]) if self.peak(keep_level) else wave

    def params(self, *, keep_level: bool) -> dict:
        if self.loudness is not None:
            return {"level": f"{self.loudness:g} LUFS"}
        return {"level": "-1 dBFS peak" if self.peak(keep_level) else "as decoded"}


def _req(kw: dict) -> dict:
    return {k: v for k, v in kw.items() if k not in _RUN_KEYS}


def _run(kw: dict) -> dict:
    return {k: v for k, v in kw.items() if k in _RUN_KEYS}


def _seeds(request: GenerationRequest, generator) -> list[int]:
    if generator is None:
        return resolve_seeds(request.seed, request.batch)
    gens = [generator] if isinstance(generator, torch.Generator) else list(generator)
    if len(gens) != request.batch:
        raise InvalidRequest(f"{len(gens)} generators for a batch of {request.batch}")
    return [g.initial_seed() for g in gens]
