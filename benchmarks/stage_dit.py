"""DiT rows: ms per step of the decoder in an N-step loop (turbo: 8), for songstep eager (each
condition's cross-attention keys/values computed once per request), songstep compiled at bucketed
lengths, songstep int8 weight-only, and diffusers' `AceStepTransformer1DModel` with the same
weights on the same inputs (its API takes the encoder states every step). `dit-cfg` runs the
CFG batch (conditional and unconditional rows together, 2 × batch)."""

from __future__ import annotations

import copy
import logging

import torch

from benchmarks.floors import weight_bytes
from benchmarks.suite import LATENT_HZ, Setup, flops_once, guarded, measure, row
from songstep.models.dit_compile import BucketedDecoder

log = logging.getLogger("benchmarks")


def diffusers_decoder(decoder, device: torch.device, dtype: torch.dtype):
    """diffusers' DiT port holding `decoder`'s weights (strict: every tensor mapped)."""
    from diffusers import AceStepTransformer1DModel

    from songstep.loading.diffusers_map import KeyMap

    cfg = decoder.cfg
    with torch.device(device):
        model = AceStepTransformer1DModel(
            hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
            head_dim=cfg.head_dim, in_channels=cfg.in_channels, audio_acoustic_hidden_dim=cfg.audio_acoustic_hidden_dim,
            patch_size=cfg.patch_size, rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps,
            sliding_window=cfg.sliding_window, layer_types=list(cfg.layer_types),
            encoder_hidden_size=cfg.encoder_hidden_size, is_turbo=cfg.is_turbo, model_version=cfg.model_version,
        )
    model = model.to(dtype).eval().requires_grad_(False)
    ours, keymap, state = decoder.state_dict(), KeyMap(), {}
    for key in model.state_dict():
        name = keymap(f"transformer/{key}")
        if name is None or not name.startswith("decoder."):
            raise KeyError(f"diffusers transformer key {key!r} has no songstep decoder parameter")
        state[key] = ours[name.removeprefix("decoder.")]
    model.load_state_dict(state, strict=True)
    return model


def _inputs(setup: Setup, frames: int, batch: int, seed: int = 1):
    cfg, dev, dtype = setup.dit.config, setup.device, setup.dtype
    g = torch.Generator(device=dev).manual_seed(seed)
    x = torch.randn(batch, frames, cfg.audio_acoustic_hidden_dim, generator=g, device=dev, dtype=dtype)
    ctx = torch.randn(batch, frames, cfg.in_channels - cfg.audio_acoustic_hidden_dim, generator=g, device=dev, dtype=dtype)
    enc = torch.randn(batch, setup.enc_tokens, cfg.enc_hidden, generator=g, device=dev, dtype=dtype)
    return x, ctx, enc


def _ours_loop(decoder, x, ctx, enc, steps: int):
    def loop():
        kv = decoder.cross_kv(enc)  # once per request, as the sampler does
        xt = x
        for i in range(steps):
            t = torch.full((x.shape[0],), 1.0 - i / steps, device=x.device, dtype=x.dtype)
            xt = xt - 0.1 * decoder(xt, t, t, context_latents=ctx, cross_kv=kv)
        return xt

    return loop


def _theirs_loop(model, x, ctx, enc, steps: int):
    def loop():
        xt = x
        for i in range(steps):
            t = torch.full((x.shape[0],), 1.0 - i / steps, device=x.device, dtype=x.dtype)
            v = model(hidden_states=xt, timestep=t, timestep_r=t, encoder_hidden_states=enc, context_latents=ctx,
                      return_dict=False)[0]
            xt = xt - 0.1 * v
        return xt

    return loop


def _forward(fn_decoder, x, ctx, enc, diffusers: bool = False) -> torch.Tensor:
    t = torch.full((x.shape[0],), 0.75, device=x.device, dtype=x.dtype)
    with torch.no_grad():
        if diffusers:
            return fn_decoder(hidden_states=x, timestep=t, timestep_r=t, encoder_hidden_states=enc, context_latents=ctx,
                              return_dict=False)[0].float()
        return fn_decoder(x, t, t, enc, ctx).float()


def _diff(a: torch.Tensor, b: torch.Tensor) -> dict:
    return {"max_abs_err": float((a - b).abs().max()), "ref_abs_max": float(b.abs().max())}


def dit_rows(setup: Setup, durations, batches, stage: str = "dit", impls=("songstep", "diffusers")) -> list[dict]:
    rows = []
    for duration in durations:
        for batch in batches:
            rows += guarded(stage, "songstep", duration, batch, lambda d=duration, b=batch: _shape(setup, stage, impls, d, b))
    return rows


def sliding_excess_flops(cfg, tokens: int, rows: int) -> int:
    """FLOPs a dense SDPA count includes for the keys outside the sliding window (QK^T and AV over
    the masked pairs of every sliding layer): not needed work, so taken off the floor."""
    w = cfg.sliding_window
    band = sum(min(tokens, i + w + 1) - max(0, i - w) for i in range(tokens))
    layers = sum(cfg.layer_is_sliding(i) for i in range(cfg.num_hidden_layers))
    return 4 * rows * cfg.num_attention_heads * cfg.head_dim * (tokens * tokens - band) * layers


def _shape(setup: Setup, stage: str, impls, duration: float, batch: int) -> list[dict]:
    frames, steps = int(duration * LATENT_HZ), setup.steps
    rows = batch * (2 if stage == "dit-cfg" else 1)
    x, ctx, enc = _inputs(setup, frames, rows)
    decoder, cfg = setup.dit.decoder, setup.dit.config
    one = (x[:1], ctx[:1], enc[:1])
    tokens = -(-frames // cfg.patch_size)
    flops = flops_once(setup, ("dit", duration), lambda: _count_forward(decoder, *one)) * rows
    flops -= sliding_excess_flops(cfg, tokens, rows)
    floor = setup.peaks.floor_ms(flops, weight_bytes(decoder))
    extra = {"steps": steps, "gflop_per_step": round(flops / 1e9, 3)}
    ref = _forward(decoder, x, ctx, enc)
    ms, peak = measure(setup, _ours_loop(decoder, x, ctx, enc, steps))
    out = [row(stage, "songstep", duration, batch, ms / steps, peak, floor, loop_ms=round(ms, 3), **extra)]
    plans = []
    if "diffusers" in impls:
        plans.append(("diffusers", _diffusers_row))
    if stage == "dit" and setup.focus(duration, batch):
        if setup.compile_backend:
            mode = f", {setup.compile_mode}" if setup.compile_mode else ""
            plans.append((f"songstep-compiled ({setup.compile_backend}{mode})", _compiled_row))
        if setup.quantize:
            plans.append(("songstep-int8", _int8_row))
    for impl, fn in plans:
        out += guarded(stage, impl, duration, batch,
                       lambda f=fn, i=impl: [f(setup, stage, i, duration, batch, (x, ctx, enc), ref, floor, extra)])
    return out


def _count_forward(decoder, x, ctx, enc):
    """One eager forward on the SDPA backend (what FlopCounterMode can see)."""
    from songstep.models import attention

    backend = attention.get_backend()
    attention.set_backend("sdpa")
    try:
        return _forward(decoder, x, ctx, enc)
    finally:
        attention.set_backend(backend)


def _diffusers_row(setup: Setup, stage, impl, duration, batch, inputs, ref, floor, extra) -> dict:
    theirs = _diffusers(setup)
    x, ctx, enc = inputs
    ms, peak = measure(setup, _theirs_loop(theirs, x, ctx, enc, setup.steps))
    return row(stage, impl, duration, batch, ms / setup.steps, peak, floor, loop_ms=round(ms, 3), **extra,
               **_diff(_forward(theirs, x, ctx, enc, diffusers=True), ref))


def _diffusers(setup: Setup):
    if setup._diffusers is None:
        setup._diffusers = diffusers_decoder(setup.dit.decoder, setup.device, setup.dtype)
    return setup._diffusers


def _compiled_row(setup: Setup, stage, impl, duration, batch, inputs, ref, floor, extra) -> dict:
    decoder = setup.dit.decoder
    if setup._runner is None:
        setup._runner = BucketedDecoder(decoder, setup.compile_backend, mode=setup.compile_mode)
    decoder.__dict__["bucketed"] = setup._runner
    try:
        x, ctx, enc = inputs
        ms, peak = measure(setup, _ours_loop(decoder, x, ctx, enc, setup.steps))
        err = _diff(_forward(decoder, x, ctx, enc), ref)
    finally:
        decoder.__dict__.pop("bucketed", None)
    return row(stage, impl, duration, batch, ms / setup.steps, peak, floor, loop_ms=round(ms, 3), **extra, **err)


def _int8_row(setup: Setup, stage, impl, duration, batch, inputs, ref, floor, extra) -> dict:
    from songstep.models.quantize import quantize_dit

    if setup._int8 is None:
        setup._int8 = copy.deepcopy(setup.dit)
        quantize_dit(setup._int8, "int8")
    decoder = setup._int8.decoder
    x, ctx, enc = inputs
    ms, peak = measure(setup, _ours_loop(decoder, x, ctx, enc, setup.steps))
    return row(stage, impl, duration, batch, ms / setup.steps, peak, floor, loop_ms=round(ms, 3), **extra,
               **_diff(_forward(decoder, x, ctx, enc), ref))
