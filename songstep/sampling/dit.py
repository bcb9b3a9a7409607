"""The DiT as a velocity callable, and the generate / flow-edit entry points over a `DiTModel`
(upstream's `generate_audio` and `flowedit_generate_audio`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from songstep.models.dit import DiTModel
from songstep.sampling.flow import NoiseFn, ProgressFn, Repaint, SamplerOptions, sample
from songstep.sampling.flowedit import flow_edit
from songstep.sampling.schedules import Schedule, cfg_schedule, turbo_schedule


@dataclass
class DiTInputs:
    """Everything `prepare_condition` needs, batch-first, as the handler builds it."""

    text_hidden_states: torch.Tensor
    text_attention_mask: torch.Tensor
    lyric_hidden_states: torch.Tensor
    lyric_attention_mask: torch.Tensor
    refer_audio_acoustic_hidden_states_packed: torch.Tensor
    refer_audio_order_mask: torch.Tensor
    src_latents: torch.Tensor
    chunk_masks: torch.Tensor
    is_covers: torch.Tensor
    silence_latent: torch.Tensor
    precomputed_lm_hints_25Hz: torch.Tensor | None = None

    def condition(self, model: DiTModel, *, text=None, lyrics=None, src=None, is_covers=None, hints="keep"):
        """(encoder states, context latents) for these inputs with some parts swapped."""
        text_h, text_m = text or (self.text_hidden_states, self.text_attention_mask)
        lyr_h, lyr_m = lyrics or (self.lyric_hidden_states, self.lyric_attention_mask)
        src = self.src_latents if src is None else src
        enc, _, ctx = model.prepare_condition(
            text_h,
            text_m,
            lyr_h,
            lyr_m,
            self.refer_audio_acoustic_hidden_states_packed,
            self.refer_audio_order_mask,
            hidden_states=src,
            attention_mask=torch.ones(src.shape[:2], device=src.device, dtype=src.dtype),
            silence_latent=self.silence_latent,
            src_latents=src,
            chunk_masks=self.chunk_masks,
            is_covers=self.is_covers if is_covers is None else is_covers,
            precomputed_lm_hints_25Hz=self.precomputed_lm_hints_25Hz if hints == "keep" else hints,
        )
        return enc, ctx


class DiTVelocity:
    """`(x, t, branch, corrector) -> (v_cond, v_uncond | None)` over prepared conditions.

    Each condition's cross-attention keys/values are computed once (upstream's cross-attention
    cache); under CFG the unconditional half uses `null_condition_emb` over the whole packed
    length with the same context latents, conditional rows first."""

    def __init__(self, model: DiTModel, conditions: list[tuple[torch.Tensor, torch.Tensor]], cfg: bool) -> None:
        self.model, self.conditions, self.cfg = model, conditions, cfg
        self._kv: dict[int, tuple] = {}

    def _prepared(self, branch: int):
        if branch not in self._kv:
            enc, ctx = self.conditions[branch]
            if self.cfg:
                enc = torch.cat([enc, self.model.null_condition_emb.to(enc.dtype).expand_as(enc)], dim=0)
                ctx = torch.cat([ctx, ctx], dim=0)
            self._kv[branch] = (self.model.decoder.cross_kv(enc), ctx)
        return self._kv[branch]

    def __call__(self, x: torch.Tensor, t: float, branch: int, corrector: bool = False):
        kv, ctx = self._prepared(branch)
        x_in = torch.cat([x, x], dim=0) if self.cfg else x
        tt = torch.full((x_in.shape[0],), t, dtype=x.dtype, device=x.device)
        v = self.model.decoder(x_in, tt, tt, context_latents=ctx, cross_kv=kv)
        if self.cfg:
            cond, uncond = v.chunk(2)
            return cond, uncond
        return v, None


def schedule_for(model: DiTModel, options: SamplerOptions) -> Schedule:
    dtype = model.dtype
    if model.config.is_turbo:
        return turbo_schedule(options.steps, options.shift, options.timesteps, dtype)
    return cfg_schedule(options.steps or 30, options.shift, options.timesteps, dtype)


def effective_options(model: DiTModel, options: SamplerOptions) -> SamplerOptions:
    """Turbo models have guidance distilled in: they always run without CFG."""
    if model.config.is_turbo and options.guidance_scale != 1.0:
        return replace(options, guidance_scale=1.0)
    return options


@torch.no_grad()
def generate_latents(
    model: DiTModel,
    inputs: DiTInputs,
    noise: torch.Tensor,
    options: SamplerOptions,
    *,
    non_cover_text: tuple[torch.Tensor, torch.Tensor] | None = None,
    repaint: Repaint | None = None,
    sde_noise: NoiseFn | None = None,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """Sample target latents [B, T, 64] from `noise` (drawn by the caller from its generators)."""
    options = effective_options(model, options)
    conditions = [inputs.condition(model)]
    if options.cover_strength < 1.0:
        if non_cover_text is None:
            raise ValueError("audio_cover_strength < 1 needs the non-cover caption encoding")
        t, b = inputs.src_latents.shape[1], inputs.src_latents.shape[0]
        silence = inputs.silence_latent[:, :t].to(inputs.src_latents.dtype).expand(b, -1, -1)
        conditions.append(
            inputs.condition(model, text=non_cover_text, src=silence, is_covers=torch.zeros_like(inputs.is_covers), hints=None)
        )
    velocity = DiTVelocity(model, conditions, cfg=options.guidance_scale > 1.0)
    return sample(
        velocity,
        noise,
        schedule_for(model, options),
        options,
        source=inputs.src_latents,
        repaint=repaint,
        sde_noise=sde_noise,
        progress=progress,
    )


@torch.no_grad()
def flowedit_latents(
    model: DiTModel,
    inputs: DiTInputs,
    target_text: tuple[torch.Tensor, torch.Tensor],
    target_lyrics: tuple[torch.Tensor, torch.Tensor],
    options: SamplerOptions,
    *,
    n_min: float,
    n_max: float,
    n_avg: int,
    forward_noise: NoiseFn,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """Edit `inputs.src_latents` toward the target caption/lyrics. The schedule is the CFG one
    (linspace + shift) on every variant; turbo runs without guidance."""
    options = effective_options(model, options)
    source_cond = inputs.condition(model)
    target_cond = inputs.condition(model, text=target_text, lyrics=target_lyrics)
    velocity = DiTVelocity(model, [source_cond, target_cond], cfg=options.guidance_scale > 1.0)
    schedule = cfg_schedule(options.steps or 60, options.shift, options.timesteps, model.dtype)
    return flow_edit(
        velocity,
        inputs.src_latents,
        schedule,
        options,
        n_min=n_min,
        n_max=n_max,
        n_avg=n_avg,
        forward_noise=forward_noise,
        progress=progress,
    )
