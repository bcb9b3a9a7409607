"""Sampler cases (`generate_audio` / `flowedit_generate_audio`) of the reference fixtures, run from
their index entry: the recorded kwargs (over the revision's `sampler_defaults` and upstream's
signature defaults) become `SamplerOptions`, and every noise tensor is drawn here from the recorded
seeds — the stored `in.noise*` tensors are never used."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from songstep.models.dit import DiTModel
from songstep.sampling.dcw import DCWOptions
from songstep.sampling.dit import DiTInputs, flowedit_latents, generate_latents
from songstep.sampling.flow import Repaint, SamplerOptions
from songstep.sampling.noise import NoiseStream, draw_noise, generators_from_seed, mix_retake

# upstream's generate_audio signature defaults (newest revision)
_TURBO_DEFAULTS = {"infer_steps": None, "shift": 3.0, "diffusion_guidance_scale": 1.0}
_CFG_DEFAULTS = {"infer_steps": 30, "shift": 1.0, "diffusion_guidance_scale": 7.0}
_COMMON_DEFAULTS = {
    "infer_method": "ode",
    "sampler_mode": "euler",
    "use_adg": False,
    "cfg_interval_start": 0.0,
    "cfg_interval_end": 1.0,
    "audio_cover_strength": 1.0,
    "cover_noise_strength": 0.0,
    "repaint_crossfade_frames": 10,
    "repaint_injection_ratio": 0.5,
    "velocity_norm_threshold": 0.0,
    "velocity_ema_factor": 0.0,
    "dcw_enabled": True,
    "dcw_mode": "double",
    "dcw_scaler": 0.05,
    "dcw_high_scaler": 0.02,
    "dcw_wavelet": "haar",
    "retake_seed": None,
    "retake_variance": 0.0,
    "seed": None,
}


def case_args(model: DiTModel, entry: dict, index: dict) -> dict[str, Any]:
    args = dict(_COMMON_DEFAULTS)
    args.update(_TURBO_DEFAULTS if model.config.is_turbo else _CFG_DEFAULTS)
    args.update({k: v for k, v in index.get("sampler_defaults", {}).items() if k in args})
    given = dict(entry.get("args", {}))
    if "diffusion_guidance_sale" in given:  # the 2B base kwarg's upstream typo
        given.setdefault("diffusion_guidance_scale", given.pop("diffusion_guidance_sale"))
    args.update(given)
    return args


def options_from_args(args: dict[str, Any], timesteps: torch.Tensor | None) -> SamplerOptions:
    guidance = args.get("guidance_variant") or ("adg" if args["use_adg"] else "apg")
    return SamplerOptions(
        steps=args["infer_steps"],
        shift=float(args["shift"]),
        timesteps=None if timesteps is None else tuple(timesteps.tolist()),
        method=args["infer_method"],
        solver=args["sampler_mode"],
        guidance_scale=float(args["diffusion_guidance_scale"]),
        guidance=guidance,
        cfg_interval=(float(args["cfg_interval_start"]), float(args["cfg_interval_end"])),
        cover_strength=float(args["audio_cover_strength"]),
        cover_noise_strength=float(args["cover_noise_strength"]),
        repaint_injection_ratio=float(args["repaint_injection_ratio"]),
        repaint_crossfade_frames=int(args["repaint_crossfade_frames"]),
        velocity_norm_threshold=float(args["velocity_norm_threshold"]),
        velocity_ema_factor=float(args["velocity_ema_factor"]),
        dcw=DCWOptions(
            enabled=bool(args["dcw_enabled"]),
            mode=args["dcw_mode"],
            scaler=float(args["dcw_scaler"]),
            high_scaler=float(args["dcw_high_scaler"]),
            wavelet=args["dcw_wavelet"],
        ),
    )


def dit_inputs(x: dict[str, torch.Tensor]) -> DiTInputs:
    return DiTInputs(
        text_hidden_states=x["text_hidden_states"],
        text_attention_mask=x["text_attention_mask"],
        lyric_hidden_states=x["lyric_hidden_states"],
        lyric_attention_mask=x["lyric_attention_mask"],
        refer_audio_acoustic_hidden_states_packed=x["refer_audio_acoustic_hidden_states_packed"],
        refer_audio_order_mask=x["refer_audio_order_mask"],
        src_latents=x["src_latents"],
        chunk_masks=x["chunk_masks"],
        is_covers=x["is_covers"],
        silence_latent=x["silence_latent"],
        precomputed_lm_hints_25Hz=x.get("precomputed_lm_hints_25Hz"),
    )


@contextlib.contextmanager
def trace_decoder(model: DiTModel, batch: int):
    """Record every DiT call: timestep (all rows), input latents (first `batch` rows), velocity."""
    calls: dict[str, list[torch.Tensor]] = {"traj.timestep": [], "traj.x_in": [], "traj.v_out": []}

    def hook(module, args, kwargs, output):
        calls["traj.timestep"].append(args[1].detach().clone())
        calls["traj.x_in"].append(args[0][:batch].detach().clone())
        calls["traj.v_out"].append(output.detach().clone())

    handle = model.decoder.register_forward_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def _stack(calls: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack(v) for k, v in calls.items() if v}


def _initial_noise(model: DiTModel, x: dict, args: dict, drawn: dict) -> torch.Tensor:
    src = x["src_latents"]
    shape, kw = (src.shape[0], src.shape[1], src.shape[2]), dict(device=src.device, dtype=model.dtype)
    noise = draw_noise(shape, generators_from_seed(args["seed"], src.device), **kw)
    drawn["in.noise"] = noise
    if float(args["retake_variance"]) > 0.0:
        retake = draw_noise(shape, generators_from_seed(args["retake_seed"], src.device), **kw)
        drawn["in.retake_noise"] = retake
        noise = mix_retake(noise, retake, float(args["retake_variance"]))
        drawn["in.noise_mixed"] = noise
    return noise


def run_generate_case(model: DiTModel, x: dict, entry: dict, index: dict, drawn: dict) -> dict[str, torch.Tensor]:
    args = case_args(model, entry, index)
    options = options_from_args(args, x.get("timesteps"))
    noise = _initial_noise(model, x, args, drawn)
    global_seed = args.get("global_torch_manual_seed_before_call")
    sde = NoiseStream(None if global_seed is None else torch.Generator().manual_seed(int(global_seed)), record=True)
    repaint = None
    if x.get("repaint_mask") is not None and x.get("clean_src_latents") is not None:
        repaint = Repaint(x["repaint_mask"].to(torch.bool), x["clean_src_latents"])
    non_cover = None
    if "non_cover_text_hidden_states" in x:
        non_cover = (x["non_cover_text_hidden_states"], x["non_cover_text_attention_mask"])
    with trace_decoder(model, x["src_latents"].shape[0]) as calls:
        out = generate_latents(
            model, dit_inputs(x), noise, options, non_cover_text=non_cover, repaint=repaint, sde_noise=sde
        )
    if sde.draws:
        drawn["in.sde_noise"] = torch.stack(sde.draws)
    return {"out.target_latents": out, **_stack(calls)}


def run_flowedit_case(model: DiTModel, x: dict, entry: dict, index: dict, drawn: dict) -> dict[str, torch.Tensor]:
    args = case_args(model, entry, index)
    args.setdefault("infer_steps", 60)
    args["dcw_enabled"], args["sampler_mode"], args["use_adg"] = False, "euler", False
    options = options_from_args(args, x.get("timesteps"))
    fwd_seed = args["retake_seed"] if args.get("retake_seed") is not None else args["seed"]
    fwd = NoiseStream(generators_from_seed(fwd_seed, x["src_latents"].device), record=True)
    with trace_decoder(model, x["src_latents"].shape[0]) as calls:
        out = flowedit_latents(
            model,
            dit_inputs(x),
            (x["target_text_hidden_states"], x["target_text_attention_mask"]),
            (x["target_lyric_hidden_states"], x["target_lyric_attention_mask"]),
            options,
            n_min=float(args.get("edit_n_min", 0.0)),
            n_max=float(args.get("edit_n_max", 1.0)),
            n_avg=int(args.get("edit_n_avg", 1)),
            forward_noise=fwd,
        )
    if fwd.draws:
        drawn["in.fwd_noise"] = torch.stack(fwd.draws)
    return {"out.target_latents": out, **_stack(calls)}
