"""Writing the diffusers layout: our DiT (plus the VAE and text encoder folders) as an
`AceStepPipeline` repository, built with diffusers' own classes and `save_pretrained`.

The DiT's four components (`transformer/`, `condition_encoder/`, `audio_tokenizer/`,
`audio_token_detokenizer/`) are diffusers modules sized from our config and filled through the
same key map the loader reads with (`songstep.loading.diffusers_map.KeyMap`): every diffusers key
is mapped to our parameter name, so a key either map does not know is an error here as well. The
silence latent goes into the condition encoder's `silence_latent` buffer (time-major
[1, N, 64]), as diffusers' converter bakes it.

Fields of our config that the diffusers configs have no place for (`EXTRA_FIELDS`, e.g.
`timbre_fix_frame`, the timbre encoder's silence length) are written into `transformer/config.json`
as extra keys after `save_pretrained`; diffusers ignores unknown config keys when it loads, and
our loader reads them back (a folder without them gets upstream's values, the `DiTConfig`
defaults).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from songstep.config import DiTConfig
from songstep.errors import CheckpointError
from songstep.loading.diffusers_map import (
    AUDIO_DETOKENIZER,
    AUDIO_TOKENIZER,
    CONDITION_ENCODER,
    CONFIG_NAME,
    EXTRA_FIELDS,
    SILENCE_KEY,
    TRANSFORMER,
    KeyMap,
)
from songstep.models.dit import DiTModel

log = logging.getLogger(__name__)


def component_kwargs(cfg: DiTConfig) -> dict[str, dict[str, Any]]:
    """The diffusers constructor arguments of the four DiT components for `cfg`, by folder (what
    diffusers' `convert_ace_step_to_diffusers.py` derives from an official config)."""
    shared = dict(head_dim=cfg.head_dim, rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps,
                  sliding_window=cfg.sliding_window, attention_bias=cfg.attention_bias,
                  attention_dropout=cfg.attention_dropout)
    enc = dict(hidden_size=cfg.enc_hidden, intermediate_size=cfg.enc_intermediate, num_attention_heads=cfg.enc_heads,
               num_key_value_heads=cfg.enc_kv_heads, **shared)
    pool = dict(audio_acoustic_hidden_dim=cfg.audio_acoustic_hidden_dim, pool_window_size=cfg.pool_window_size,
                num_attention_pooler_hidden_layers=cfg.num_attention_pooler_hidden_layers,
                layer_types=list(cfg.layer_types[: cfg.num_attention_pooler_hidden_layers]), **enc)
    return {
        TRANSFORMER.folder: dict(
            hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_key_value_heads, in_channels=cfg.in_channels,
            audio_acoustic_hidden_dim=cfg.audio_acoustic_hidden_dim, patch_size=cfg.patch_size,
            layer_types=list(cfg.layer_types), encoder_hidden_size=cfg.enc_hidden, is_turbo=cfg.is_turbo,
            model_version=cfg.model_version, **shared,
        ),
        CONDITION_ENCODER.folder: dict(
            text_hidden_dim=cfg.text_hidden_dim, timbre_hidden_dim=cfg.timbre_hidden_dim,
            num_lyric_encoder_hidden_layers=cfg.num_lyric_encoder_hidden_layers,
            num_timbre_encoder_hidden_layers=cfg.num_timbre_encoder_hidden_layers, **enc,
        ),
        AUDIO_TOKENIZER.folder: dict(fsq_dim=cfg.fsq_dim, fsq_input_levels=list(cfg.fsq_input_levels),
                                     fsq_input_num_quantizers=cfg.fsq_input_num_quantizers, **pool),
        AUDIO_DETOKENIZER.folder: dict(pool),
    }


def diffusers_dit(model: DiTModel, silence: torch.Tensor | None = None) -> dict[str, torch.nn.Module]:
    """The four diffusers DiT modules holding `model`'s weights (fp32 copies of its dtype's
    values), by folder; `silence` ([1, N, 64] time-major) fills the condition encoder's buffer."""
    from diffusers import AceStepTransformer1DModel
    from diffusers.pipelines.ace_step import (
        AceStepAudioTokenDetokenizer,
        AceStepAudioTokenizer,
        AceStepConditionEncoder,
    )

    classes = {TRANSFORMER.folder: AceStepTransformer1DModel, CONDITION_ENCODER.folder: AceStepConditionEncoder,
               AUDIO_TOKENIZER.folder: AceStepAudioTokenizer, AUDIO_DETOKENIZER.folder: AceStepAudioTokenDetokenizer}
    ours = model.state_dict()
    keys, used, out = KeyMap(), set(), {}
    for folder, kwargs in component_kwargs(model.config).items():
        module = classes[folder](**kwargs).eval().requires_grad_(False)
        values = {}
        for key, tensor in module.state_dict().items():
            name = keys(f"{folder}/{key}")
            if name is None:  # the silence latent
                values[key] = tensor if silence is None else silence.detach().float().cpu().contiguous()
                continue
            if name not in ours or ours[name].shape != tensor.shape:
                raise CheckpointError(f"diffusers {folder}/{key} has no counterpart {name!r} of shape {tuple(tensor.shape)}")
            values[key] = ours[name].detach().float().cpu().contiguous()
            used.add(name)
        if SILENCE_KEY in values:
            module.silence_latent = values.pop(SILENCE_KEY)  # its length need not be diffusers' 15 000
        module.load_state_dict(values, strict=False, assign=True)
        out[folder] = module
    left = sorted(set(ours) - used)
    if left:
        raise CheckpointError(f"the diffusers layout has no place for {len(left)} of our tensors: {left[:5]}")
    return out


def write_extra_fields(root: str | Path, cfg: DiTConfig) -> None:
    """Add `EXTRA_FIELDS` of `cfg` to `root/transformer/config.json` (fields diffusers' configs
    do not have)."""
    path = Path(root) / TRANSFORMER.folder / CONFIG_NAME
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update({name: getattr(cfg, name) for name in EXTRA_FIELDS})
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_diffusers(
    root: str | Path,
    model: DiTModel,
    *,
    silence: torch.Tensor | None,
    vae: str | Path,
    text_encoder: str | Path,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a complete diffusers-layout repository at `root` (`model_index.json`, the four DiT
    components, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`) with `AceStepPipeline
    .save_pretrained`, from our DiT, its silence latent and the official `vae/` and text-encoder
    folders; then the extra config fields. Weights are saved in `dtype`."""
    from diffusers import AutoencoderOobleck, FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.ace_step import AceStepPipeline
    from transformers import AutoModel, AutoTokenizer

    modules = diffusers_dit(model, silence)
    pipe = AceStepPipeline(
        vae=AutoencoderOobleck.from_pretrained(str(vae), use_safetensors=True, local_files_only=True),
        text_encoder=AutoModel.from_pretrained(str(text_encoder), local_files_only=True),
        tokenizer=AutoTokenizer.from_pretrained(str(text_encoder), local_files_only=True),
        # the pipeline passes its own sigmas: no re-shift, timesteps == sigmas (the converter's choice)
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0),
        transformer=modules[TRANSFORMER.folder],
        condition_encoder=modules[CONDITION_ENCODER.folder],
        audio_tokenizer=modules[AUDIO_TOKENIZER.folder],
        audio_token_detokenizer=modules[AUDIO_DETOKENIZER.folder],
    )
    pipe.to(dtype)
    pipe.save_pretrained(str(root), safe_serialization=True)
    write_extra_fields(root, model.config)
    log.info("wrote the diffusers layout of %s to %s", model.config.model_version, root)
    return Path(root)
