"""`Pipeline`: the library API.

    pipe = Pipeline.from_pretrained("ACE-Step/Ace-Step1.5")           # or a local checkpoints dir
    result = pipe.generate(caption="lofi hip hop", lyrics="[Instrumental]", duration=60, seed=7)
    result.audio  # [batch, 2, samples] float32 at 48 kHz
    result.take(1).params  # the second take's own parameters (its seed, planned metas, …)

Every task method builds one `GenerationRequest` (`songstep.request`, validated when built) and runs
it through `run()`: resolve into an execution plan (`songstep.pipeline.plan`) → plan with the LM
(text2music with a planner loaded, `songstep.pipeline.planning`) → prepare the DiT inputs → sample →
decode → post-process (`songstep.postprocess`). Out-of-memory handling is `songstep.pipeline.memory`.
The Pipeline only orchestrates: no request state survives a call, so each request stands alone.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from songstep.constants import AUDIO_CODE_TOKEN, HOP_LENGTH, SAMPLE_RATE
from songstep.devices import resolve_device
from songstep.errors import InvalidRequest
from songstep.loading.checkpoint import default_dtype
from songstep.lora import LoraMixin
from songstep.pipeline import memory, planning
from songstep.pipeline.autogen import AutoGen
from songstep.pipeline.components import (
    Components,
    announce_load,
    load_components,
    resolve_lm,
    weights_digest,
)
from songstep.pipeline.inputs import Prepared, generators, load_wave, prepare
from songstep.pipeline.plan import ExecutionPlan, resolve
from songstep.pipeline.tiers import Tier, detect_tier
from songstep.planner import Planner, PlanOptions, Score, SongDescription
from songstep.planner.core import StageProgress
from songstep.postprocess import splice
from songstep.request import GenerationRequest, next_seed, take_seeds
from songstep.sampling.dit import generate_latents
from songstep.sampling.noise import NoiseStream, draw_noise, mix_retake

log = logging.getLogger(__name__)
status = logging.getLogger("songstep.status")  # one line per stage; the CLI shows these on stderr

Progress = StageProgress  # (stage, done, total): the planner reports through the same callback
CALL_KEYS = ("generator", "progress", "plan_options", "output_type")


@dataclass
class Take:
    """One take of a result: its audio [2, samples], seed and own parameters."""

    audio: torch.Tensor
    sample_rate: int
    seed: int
    params: dict[str, Any]


@dataclass
class GenerationResult:
    """One request's takes: `audio[i]` was made with `seeds[i]` and can be reproduced alone."""

    audio: Any  # [B, 2, samples] float32 tensor (a numpy array with output_type="np")
    sample_rate: int
    seeds: list[int]
    params: dict[str, Any]  # the full effective parameters (request + defaults + derived)
    timings: dict[str, float] = field(default_factory=dict)
    latents: torch.Tensor | None = None
    alignments: list | None = None  # per take, with lrc=True or score=True: LyricAlignment (lrc, vtt, lines, score)

    @property
    def duration(self) -> float:
        return self.audio.shape[-1] / self.sample_rate

    def take(self, i: int) -> Take:
        """Take i with its own parameters: the batch's, with a planned take's own fields (seed,
        metas, codes), its seed and `batch_index`. `params["request"]` stays the whole batch's
        request (with the seed actually used), so replaying it and keeping take i gives the same
        samples (a take made alone is equal only up to float rounding of batched kernels)."""
        items = self.params.get("items") or []
        base = {k: v for k, v in self.params.items() if k != "items"}
        params = {**base, **(items[i] if i < len(items) else {}), "seed": self.seeds[i], "batch_index": i}
        return Take(self.audio[i], self.sample_rate, self.seeds[i], params)

    def takes(self) -> list[Take]:
        return [self.take(i) for i in range(len(self.seeds))]


class Pipeline(LoraMixin):
    """DiT + VAE + text encoder (+ planner), on one device, ready to run requests. Runs are
    serialised by a lock (AutoGen generates in a background thread)."""

    def __init__(self, components: Components, tier: Tier, planner: Planner | None = None,
                 source: dict[str, Any] | None = None) -> None:
        self.components = components
        self.tier = tier
        self.planner = planner
        self.source = source or {}  # where the weights came from (recorded in sidecars)
        self._lock = threading.RLock()

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path = "ACE-Step/Ace-Step1.5",
        *,
        variant: str = "turbo",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        torch_dtype: torch.dtype | None = None,
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
        extra; `vllm_options` go to `VLLMBackend`). `torch_dtype` is diffusers' name for `dtype`.
        `compile` (True or a backend name) and `quantize` ("int8") optimise the DiT (see
        `load_components`)."""
        dtype = dtype or torch_dtype
        dev = resolve_device(device)
        tier = tier or detect_tier(dev)
        offload = tier.offload if offload is None else offload
        status.info("device %s, %s, %s tier%s", dev, str(dtype or default_dtype(dev)).removeprefix("torch."),
                    tier.name, ", offloading idle parts to the CPU" if offload else "")
        components = load_components(
            model, variant=variant, device=dev, dtype=dtype, offload=offload, root=root, offline=offline,
            compile=compile, quantize=quantize,
        )
        folder = resolve_lm(model, lm, tier.lm, root, offline)
        planner = None
        if folder is not None:
            announce_load(f"planner LM {folder.name}", folder)
            planner = Planner.from_pretrained(
                folder, device=dev, dtype=dtype, max_duration=tier.max_duration_lm, backend=lm_backend,
                vllm_options=vllm_options,
            )
        folder = components.folders[variant]
        source = {"model": str(model), "variant": variant, "folder": str(folder), "digest": weights_digest(folder)}
        return cls(components, tier, planner, source=source)

    # -- diffusers habits -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.components.device

    @property
    def dtype(self) -> torch.dtype:
        return self.components.dit.dtype

    def to(self, device: torch.device | str) -> Pipeline:
        """Move every component (and the planner LM) to `device`; returns the pipeline."""
        device = resolve_device(device)
        with self._lock:
            lm_device = self.planner.lm.backend.device if self.planner is not None else None
            if lm_device is not None and torch.device(lm_device).type != device.type:
                raise InvalidRequest(f"the planner LM stays on {lm_device}: load the pipeline with device={str(device)!r} "
                                     "(or lm='none') instead of moving it")
            self.components.to(device)
        return self

    # -- task methods ------------------------------------------------------------------------
    def generate(self, caption: str = "", lyrics: str = "", *, duration: float | None = None, **kw) -> GenerationResult:
        """A new song (text2music) from a caption and lyrics."""
        return self._task(dict(task="text2music", caption=caption, lyrics=lyrics, duration=duration), kw)

    def cover(self, source, caption: str = "", *, strength: float = 1.0, **kw) -> GenerationResult:
        """Restyle `source`: strength is the share of the steps that follow its structure."""
        return self._task(dict(task="cover", source_audio=source, caption=caption, strength=strength), kw)

    def repaint(self, source, start: float, end: float | None, caption: str = "", **kw) -> GenerationResult:
        """Regenerate [start, end) seconds; a negative start or an end past the source extends it."""
        return self._task(dict(task="repaint", source_audio=source, repaint_start=start, repaint_end=end,
                               caption=caption), kw)

    def add_layer(self, source, track: str, caption: str = "", **kw) -> GenerationResult:
        """Add one instrument track to `source` (upstream "lego"; needs a base/sft model)."""
        return self._task(dict(task="lego", source_audio=source, tracks=(track,), caption=caption), kw)

    def extract(self, source, track: str, **kw) -> GenerationResult:
        """Isolate one track (stem) of `source` (needs a base/sft model)."""
        return self._task(dict(task="extract", source_audio=source, tracks=(track,)), kw)

    def complete(self, source, tracks, caption: str = "", **kw) -> GenerationResult:
        """Write the accompaniment for a single track, e.g. a vocal (Vocal2BGM)."""
        tracks = (tracks,) if isinstance(tracks, str) else tuple(tracks)
        return self._task(dict(task="complete", source_audio=source, tracks=tracks, caption=caption), kw)

    def _task(self, fields: dict[str, Any], kw: dict[str, Any]) -> GenerationResult:
        call = {k: kw.pop(k) for k in CALL_KEYS if k in kw}
        return self.run(GenerationRequest(**fields, **kw), **call)

    # -- the one code path -----------------------------------------------------------------------
    def run(
        self,
        request: GenerationRequest,
        *,
        generator: torch.Generator | list[torch.Generator] | None = None,
        progress: Progress | None = None,
        plan_options: PlanOptions | None = None,
        output_type: str = "pt",
        **request_fields: Any,
    ) -> GenerationResult:
        """Run one request. With a planner loaded, `request.thinking` (default on) makes the LM write
        audio codes for text2music, and missing bpm/key/time signature/duration are filled from
        its CoT either way (`plan_options`, else the request's `lm_*` fields, tune it); without a
        planner both are ignored. `request_fields` (e.g. `normalize=False`) are applied to the request.

        Level: see `songstep.postprocess` (new songs peak at −1 dBFS; stems, layers, completions and
        repaints keep the source's level; `loudness=-14.0` scales to that integrated loudness).

        `progress(stage, done, total)` is called per DiT step ("dit"), per VAE block of each tile
        of the source encode ("encode") and of the decode ("vae") and every few LM tokens ("lm", "lm-codes"). It may
        raise (e.g. `songstep.errors.Cancelled`) to stop the run there: the exception propagates and
        the pipeline is free for the next run. `output_type="np"` returns numpy audio."""
        if output_type not in ("pt", "np"):
            raise InvalidRequest(f"output_type must be 'pt' or 'np', got {output_type!r}")
        if request_fields:
            request = request.replace(**request_fields)
        with self._lock:
            gens = planning.item_generators(generator, request.batch) if generator is not None else None
            seeds = [g.initial_seed() for g in gens] if gens else None
            plan = resolve(request, self.components.dit.config, self.components.variant, seeds=seeds)
            think = True if request.thinking is None else bool(request.thinking)
            run_lm, codes = planning.planner_steps(request, plan.spec, think)
            if self.planner is None or not run_lm:
                if request.thinking and self.planner is None:
                    log.info("thinking requested but no planner LM is loaded (lm=...)")
                result = self._generate(plan, generator=generator, progress=progress)
            else:
                result = self._run_planned(plan, generator, progress, codes, plan_options)
            if request.lrc or request.score:
                result.alignments = [self.align(result, request, take=i, score=request.score)
                                     for i in range(len(result.seeds))]
        if output_type == "np":
            result.audio = result.audio.numpy()
        return result

    def _run_planned(self, plan: ExecutionPlan, generator, progress, codes, options) -> GenerationResult:
        t0 = time.perf_counter()
        request = plan.request
        options = options or planning.plan_options(request)
        plans = planning.plan_takes(self.planner, request, plan.seeds, codes=codes, options=options, tier=self.tier,
                                    progress=progress)
        if self.components.offload:  # small GPUs: the LM's KV cache makes room for the DiT and VAE
            self.planner.release()
        lm_seconds = time.perf_counter() - t0
        gens = planning.item_generators(generator, len(plans))
        config, variant = self.components.dit.config, self.components.variant
        results = [
            self._generate(resolve(p.request, config, variant, seeds=[p.seed]), generator=g, progress=progress)
            for p, g in zip(plans, gens)
        ]
        return GenerationResult(**planning.combine(
            request, plans, results, planner=self.planner, options=options, codes=codes, lm_seconds=lm_seconds
        ))

    def _generate(self, plan: ExecutionPlan, *, generator, progress) -> GenerationResult:
        """One take set through the DiT and VAE, under the memory policy (`memory.retry_once`)."""
        gens = [g for g in planning.item_generators(generator, 1) if g is not None]
        advice = (f"out of GPU memory for {plan.batch} take(s) of {plan.texts.duration or 'the planned'} s "
                  f"({self.tier.name} tier): lower the batch or the duration, load with offload=True, "
                  "or use a smaller planner LM (lm='0.6B' or 'none')")
        return memory.retry_once(lambda: self._generate_once(plan, generator=generator, progress=progress),
                                 gens, self._free, advice)

    def _free(self) -> int:
        return memory.free_memory(self.planner, self.components.device)

    def _generate_once(self, plan: ExecutionPlan, *, generator, progress) -> GenerationResult:
        c = self.components
        timings: dict[str, float] = {}
        start = time.perf_counter()
        prep = prepare(c, plan, progress)
        timings["prepare"] = time.perf_counter() - start
        timings.update(prep.timings)
        latents = self._sample(prep, plan, generator, progress, timings)
        wave, fallback = self._decode(prep, plan, latents, timings, progress)
        wave = plan.level.apply(wave)
        timings["total"] = time.perf_counter() - start
        params = {**planning.record(plan, prep, c.variant, self.source), **plan.level.params()}
        adapters = [a for a in self.lora_status() if a["enabled"] and a["scale"] != 0]
        if adapters:
            params["adapters"] = adapters  # `--from` loads them again
        if fallback:
            params["vae_decode"] = fallback
        return GenerationResult(wave, SAMPLE_RATE, list(plan.seeds), params, timings, latents)

    def align(self, result, request: GenerationRequest, *, take: int = 0, score: bool = True):
        """Lyric timestamps (LRC, WebVTT) and alignment score of one take: a `GenerationResult`
        (or a take's latents) made from `request` (`songstep.pipeline.lyrics_timing`)."""
        from songstep.pipeline.lyrics_timing import align_result

        return align_result(self, result, request, take, score=score)

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
            first = next_seed(after.seeds[-1])
        elif request.seed is not None:
            first = next_seed(int(request.seed) + request.batch - 1)
        else:
            first = take_seeds(None, 1)[0]
        return AutoGen(self.run, request.replace(seed=first), run_kwargs, self._lock)

    def _sample(self, prep: Prepared, plan: ExecutionPlan, generator, progress, timings) -> torch.Tensor:
        c, t0 = self.components, time.perf_counter()
        dev, dtype = c.silence.device, c.dit.dtype
        gens = generator if generator is not None else generators(prep.seeds, dev)
        if isinstance(gens, torch.Generator):
            gens = [gens]
        shape = (len(prep.seeds), prep.plan.dit_frames, c.dit.config.audio_acoustic_hidden_dim)
        noise = draw_noise(shape, gens, device=dev, dtype=dtype)
        if plan.retake_seeds is not None:
            retake = draw_noise(shape, generators(plan.retake_seeds, dev), device=dev, dtype=dtype)
            noise = mix_retake(noise, retake, plan.retake_variance)

        def step(done: int, total: int) -> None:
            if progress is not None:
                progress("dit", done, total)

        with c.on_device("dit"):
            latents = generate_latents(
                c.dit, prep.inputs, noise, plan.sampler, non_cover_text=prep.non_cover_text,
                repaint=prep.repaint, sde_noise=NoiseStream(gens), progress=step,
            )
        timings["dit"] = time.perf_counter() - t0
        return latents[:, : prep.plan.frames]

    def _decode(self, prep: Prepared, plan: ExecutionPlan, latents, timings, progress) -> tuple[torch.Tensor, str | None]:
        t0 = time.perf_counter()
        if not torch.isfinite(latents).all():
            raise RuntimeError("the DiT produced NaN/Inf latents")
        tick = (lambda done, total: progress("vae", done, total)) if progress is not None else None
        wave, fallback = memory.vae_decode(self.components, latents, self._free, tick)  # moves per tile block
        if prep.repaint is not None and prep.source_wave is not None and prep.plan.window is not None:
            wave = torch.stack([splice(w, prep.source_wave, prep.plan.window, prep.wave_crossfade) for w in wave])
        timings["vae"] = time.perf_counter() - t0
        return wave, fallback
