"""`Pipeline`: the library API (spec pipeline.md §3).

    pipe = Pipeline.from_pretrained("ACE-Step/Ace-Step1.5")           # or a local checkpoints dir
    result = pipe.generate(caption="lofi hip hop", lyrics="[Instrumental]", duration=60, seed=7)
    result.audio  # [batch, 2, samples] float32 at 48 kHz

Every task method builds a `GenerationRequest` and runs it through `run()`: validate → plan →
condition → sample → decode → post-process.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from songstep import audio
from songstep.conditioning import repaint_settings, validate_request
from songstep.config import GenerationRequest, variant_defaults
from songstep.constants import HOP_LENGTH, SAMPLE_RATE
from songstep.pipeline.components import Components, load_components
from songstep.pipeline.inputs import Prepared, generators, prepare, resolve_seeds
from songstep.pipeline.tiers import Tier, detect_tier
from songstep.sampling.dcw import DCWOptions
from songstep.sampling.dit import generate_latents
from songstep.sampling.flow import SamplerOptions
from songstep.sampling.noise import NoiseStream, draw_noise, mix_retake

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


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


def sampler_options(request: GenerationRequest, dit_config) -> SamplerOptions:
    d = variant_defaults(dit_config)
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
    """DiT + VAE + text encoder (+ planner), on one device, ready to run requests."""

    def __init__(self, components: Components, tier: Tier, planner=None) -> None:
        self.components = components
        self.tier = tier
        self.planner = planner

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
    ) -> Pipeline:
        """Load from a local checkpoints directory or a hub repository (downloaded into `root`).
        `offload=None` follows the GPU tier picked from free memory (≤ 12 GB: offload)."""
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        tier = tier or detect_tier(dev)
        offload = tier.offload if offload is None else offload
        components = load_components(
            model, variant=variant, device=dev, dtype=dtype, offload=offload, root=root, offline=offline
        )
        return cls(components, tier)

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
    ) -> GenerationResult:
        c = self.components
        spec = validate_request(request, c.dit.config)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        seeds = _seeds(request, generator)
        prep = prepare(c, request, spec, seeds)
        timings["prepare"] = time.perf_counter() - start
        timings.update(prep.timings)
        latents = self._sample(prep, request, generator, progress, timings)
        wave = self._decode(prep, latents, timings, progress)
        keep_level = prep.repaint is not None
        if normalize if normalize is not None else not keep_level:
            wave = torch.stack([audio.peak_normalize(audio.anti_clip(w)) for w in wave])
        else:
            wave = torch.stack([audio.anti_clip(w) for w in wave])
        timings["total"] = time.perf_counter() - start
        params = self._params(request, prep)
        return GenerationResult(wave, SAMPLE_RATE, seeds, params, timings, latents)

    def _sample(self, prep: Prepared, request, generator, progress, timings) -> torch.Tensor:
        c, t0 = self.components, time.perf_counter()
        options = sampler_options(request, c.dit.config)
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

    def _decode(self, prep: Prepared, latents: torch.Tensor, timings, progress) -> torch.Tensor:
        c, t0 = self.components, time.perf_counter()
        if not torch.isfinite(latents).all():
            raise RuntimeError("the DiT produced NaN/Inf latents")
        with c.on_device("vae"):
            wave = c.vae.decode(latents, output_device="cpu")
        if progress is not None:
            progress("vae", 1, 1)
        if prep.repaint is not None and prep.source_wave is not None and prep.plan.window is not None:
            wave = torch.stack([splice(w, prep.source_wave, prep.plan.window, prep.wave_crossfade) for w in wave])
        timings["vae"] = time.perf_counter() - t0
        return wave

    def _params(self, request: GenerationRequest, prep: Prepared) -> dict[str, Any]:
        c = self.components
        options = sampler_options(request, c.dit.config)
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


_RUN_KEYS = ("generator", "progress", "normalize")


def _req(kw: dict) -> dict:
    return {k: v for k, v in kw.items() if k not in _RUN_KEYS}


def _run(kw: dict) -> dict:
    return {k: v for k, v in kw.items() if k in _RUN_KEYS}


def _seeds(request: GenerationRequest, generator) -> list[int]:
    if generator is None:
        return resolve_seeds(request.seed, request.batch)
    gens = [generator] if isinstance(generator, torch.Generator) else list(generator)
    if len(gens) != request.batch:
        from songstep.errors import InvalidRequest

        raise InvalidRequest(f"{len(gens)} generators for a batch of {request.batch}")
    return [g.initial_seed() for g in gens]
