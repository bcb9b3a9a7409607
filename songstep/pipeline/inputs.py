"""Request → DiT inputs for a batch: seeds, source and reference audio, prompts, masks.

Every random draw is taken from per-item generators seeded with the item's seed (N, N+1, …), so
each take of a batch can be reproduced alone: the initial noise and SDE noise (DiT device), the
VAE posterior sample of the source and reference (VAE device) and the reference-audio slicing (CPU).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import torch

from songstep import audio, prompts
from songstep.conditioning import (
    TaskPlan,
    chunk_mask,
    metas_duration,
    plan_task,
    source_latents,
    window_mask,
    with_frames,
)
from songstep.constants import HOP_LENGTH, MAX_DURATION, SAMPLE_RATE
from songstep.errors import InvalidRequest
from songstep.pipeline.components import Components
from songstep.pipeline.plan import ExecutionPlan
from songstep.sampling.dit import DiTInputs
from songstep.sampling.flow import Repaint
from songstep.tasks import TASKS, TaskSpec


def generators(seeds: list[int], device: torch.device | str) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(s) for s in seeds]


@dataclass
class Prepared:
    spec: TaskSpec
    plan: TaskPlan
    seeds: list[int]
    inputs: DiTInputs
    non_cover_text: tuple[torch.Tensor, torch.Tensor] | None
    repaint: Repaint | None
    source_wave: torch.Tensor | None  # [2, S] after extension padding, for the waveform splice
    wave_crossfade: float
    prompts: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def load_wave(source) -> torch.Tensor:
    if isinstance(source, torch.Tensor):
        wave = source.detach().float().cpu()
        if wave.dim() == 1:
            wave = wave[None]
        if wave.dim() != 2 or wave.shape[0] not in (1, 2) or wave.shape[1] == 0:
            raise InvalidRequest(f"audio tensors must be [channels ≤ 2, samples] at 48 kHz, got {tuple(wave.shape)}")
        audio.warn_clipping(wave, "the audio tensor")
        return (wave.expand(2, -1) if wave.shape[0] == 1 else wave).clamp(-1, 1).contiguous()
    return audio.load_audio(source, max_seconds=MAX_DURATION)


def _source(c: Components, run: ExecutionPlan, gens_vae, progress=None):
    """(padded source wave or None, plan, per-item source latents [B, F, 64] or None)."""
    if not run.spec.needs_source or run.source_audio is None:
        return None, plan_task(run.task, None), None
    wave = load_wave(run.source_audio)
    plan = plan_task(run.task, wave.shape[1])
    wave = torch.nn.functional.pad(wave, (plan.pad_left, plan.pad_right))
    batch = len(gens_vae)
    if audio.is_silent(wave):
        lat = c.silence[: plan.frames].float()[None].expand(batch, -1, -1)
    else:
        tick = (lambda done, total: progress("encode", done, total)) if progress is not None else None
        with c.on_device("vae"):  # the bar moves per encoder block of each tile
            lat = c.vae.encode(wave[None].expand(batch, -1, -1), gens_vae, progress=tick)
    return wave, plan, lat.to(c.silence.device)


def _reference(c: Components, reference, seeds: list[int], gens_vae) -> torch.Tensor:
    """Timbre latents [B, timbre_fix_frame, 64]: three random slices (one per third) of the
    reference, tiled to the timbre length first if shorter; silence when none is given."""
    frames = c.dit.config.timbre_fix_frame
    if reference is None:
        return c.silence[:frames][None].expand(len(seeds), -1, -1)
    wave = load_wave(reference)
    if audio.is_silent(wave):
        return c.silence[:frames][None].expand(len(seeds), -1, -1)
    need = frames * HOP_LENGTH
    if wave.shape[1] < need:
        wave = wave.repeat(1, -(-need // wave.shape[1]))
    third, piece = wave.shape[1] // 3, need // 3
    slices = []
    for s in seeds:
        g = torch.Generator().manual_seed(s)
        parts = []
        for k in range(3):
            span = max(third - piece, 0)
            off = int(torch.randint(0, span + 1, (1,), generator=g)) if span else 0
            parts.append(wave[:, k * third + off : k * third + off + piece])
        slices.append(audio.pad_or_trim(torch.cat(parts, dim=1), need))
    with c.on_device("vae"):
        lat = c.vae.encode(torch.stack(slices), gens_vae)
    return lat[:, :frames].to(device=c.silence.device, dtype=c.silence.dtype)


def _hints(c: Components, codes: str) -> torch.Tensor:
    ids = prompts.audio_code_ids(codes)
    if not ids:
        raise InvalidRequest("audio codes given but none parse (expected <|audio_code_N|> tokens)")
    idx = torch.tensor(ids, device=c.silence.device)[None]
    with c.on_device("dit"), torch.no_grad():
        return c.dit.codes_to_hints(idx)


def _texts(c: Components, run: ExecutionPlan, plan: TaskPlan, batch: int):
    t = run.texts
    metas = prompts.build_metas_dict(t.bpm, t.keyscale, t.timesignature, metas_duration(plan, t.duration))
    caption_prompt, lyric_prompt = prompts.build_dit_inputs(plan.instruction, t.caption, t.lyrics, metas, t.language)
    texts = {"caption_prompt": caption_prompt, "lyrics_prompt": lyric_prompt}
    wanted = [caption_prompt]
    if t.non_cover:
        plain = prompts.build_dit_caption_prompt(TASKS["text2music"].instruction(), t.caption, metas)
        wanted.append(plain)
    with c.on_device("text"), torch.no_grad():
        hidden, mask = c.text.encode_captions(wanted)
        lyr, lyr_mask = c.text.embed_lyrics([lyric_prompt])
    dev, dt = c.silence.device, c.silence.dtype

    def rep(x):
        return x[:1].to(dev).expand(batch, *x.shape[1:]).to(dt if x.is_floating_point() else x.dtype)

    non_cover = None
    if len(wanted) > 1:
        non_cover = (rep(hidden[1:2]), rep(mask[1:2]))
    return rep(hidden), rep(mask), rep(lyr), rep(lyr_mask), non_cover, texts


def prepare(c: Components, run: ExecutionPlan, progress=None) -> Prepared:
    """DiT inputs for the plan's takes; `progress("encode", done, total)` around the source encode."""
    seeds, spec = run.seeds, run.spec
    batch = len(seeds)
    gens_vae = generators(seeds, c.vae.device)
    wave, plan, src = _source(c, run, gens_vae, progress)
    hints = None
    if run.audio_codes:
        hints = _hints(c, run.audio_codes)
        plan = with_frames(plan, hints.shape[1])
        hints = torch.nn.functional.pad(hints, (0, 0, 0, plan.dit_frames - hints.shape[1]))
        hints = hints.expand(batch, -1, -1)
        src = None
    if plan.frames * HOP_LENGTH > MAX_DURATION * SAMPLE_RATE:
        raise InvalidRequest(f"the result would be {plan.seconds:.1f} s; the limit is {MAX_DURATION:g} s")
    t = plan.dit_frames
    silence = c.silence if c.silence.shape[0] >= t else c.silence.repeat(-(-t // c.silence.shape[0]), 1)
    src_rows = [source_latents(plan, None if src is None else src[b], silence) for b in range(batch)]
    src_latents = torch.stack(src_rows)
    t_text = time.perf_counter()
    text_h, text_m, lyr_h, lyr_m, non_cover, texts = _texts(c, run, plan, batch)
    timings = {"text": time.perf_counter() - t_text}
    refer = _reference(c, run.reference_audio, seeds, gens_vae)
    inputs = DiTInputs(
        text_hidden_states=text_h,
        text_attention_mask=text_m,
        lyric_hidden_states=lyr_h,
        lyric_attention_mask=lyr_m,
        refer_audio_acoustic_hidden_states_packed=refer,
        refer_audio_order_mask=torch.arange(batch, device=refer.device),
        src_latents=src_latents,
        chunk_masks=chunk_mask(plan)[None].expand(batch, -1, -1).to(src_latents),
        is_covers=torch.full((batch,), plan.is_cover, dtype=torch.bool, device=src_latents.device),
        silence_latent=silence[None],
        precomputed_lm_hints_25Hz=hints,
    )
    repaint, crossfade = None, 0.0
    if spec.injects_source and src is not None:
        whole = dataclasses.replace(plan, window=None)  # the source with its window kept
        clean = torch.stack([source_latents(whole, src[b], silence) for b in range(batch)])
        repaint = Repaint(window_mask(plan)[None].expand(batch, -1).to(src_latents.device), clean)
        crossfade = run.wave_crossfade
    return Prepared(spec, plan, seeds, inputs, non_cover, repaint, wave, crossfade, texts, timings)
