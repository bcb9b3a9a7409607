"""Diffusers-format repositories: tiny random diffusers components saved with `save_pretrained`,
loaded into our DiT; every tensor must land in its parameter and the forwards must agree.

This is also the cross-check against code this project did not write: for a tiny 2B-like and a
tiny XL-like config, diffusers' `AceStepTransformer1DModel`, `AceStepConditionEncoder`,
`AceStepAudioTokenizer` and `AceStepAudioTokenDetokenizer` and our DiT, holding the same weights,
agree in fp32 (1e-5) stage by stage and end to end. The known differences, each pinned by a test
below rather than hidden by a tolerance:

* bf16 RoPE rounding: upstream (and we, to match it) keep RoPE's `inv_freq` as a buffer that
  `.to(bfloat16)` rounds (up to ~0.4 % per frequency), while diffusers computes the frequencies
  in full precision at every call; in bf16 the two differ by more than rounding noise, so the
  comparison is in fp32 (`test_bf16_rope_rounding_is_a_known_difference`).
* XL's timbre CLS token: upstream's XL timbre encoder prepends its `special_token` and takes that
  position's output; diffusers' encoder never prepends it (2B behaviour for every size), so XL
  condition states differ in the timbre part only (`test_xl_timbre_cls_token_is_the_only_difference`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from songstep.config import DiTConfig, tiny_config
from songstep.errors import CheckpointError
from songstep.loading.checkpoint import load_dit
from songstep.loading.diffusers_map import KeyMap, is_diffusers_layout, plan, read_silence_latent
from songstep.testing.tiny import write_tiny_dit

diffusers = pytest.importorskip("diffusers")
from diffusers import AceStepTransformer1DModel, FlowMatchEulerDiscreteScheduler  # noqa: E402
from diffusers.pipelines.ace_step import (  # noqa: E402
    AceStepAudioTokenDetokenizer,
    AceStepAudioTokenizer,
    AceStepConditionEncoder,
    AceStepPipeline,
)

WEIGHTS = "diffusion_pytorch_model.safetensors"
OURS_TO_FOLDER = {
    "decoder": "transformer",
    "encoder": "condition_encoder",
    "tokenizer": "audio_tokenizer",
    "detokenizer": "audio_token_detokenizer",
}


# -- building tiny diffusers repositories ------------------------------------------------------
def _randomize(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Distinct, well-scaled random values in every tensor (norm weights too, so a swap shows)."""
    with torch.no_grad():
        for name, t in sorted(module.state_dict(keep_vars=True).items()):
            leaf = name.rsplit(".", 1)[-1]
            noise = torch.randn(t.shape, generator=gen)
            if t.dim() >= 2 and "special_token" not in leaf and leaf not in ("null_condition_emb", "silence_latent"):
                fan_in = t.shape[0] if name.startswith("proj_out_conv") else t[0].numel()
                value = noise * fan_in**-0.5
            elif t.dim() == 1 and "norm" in name:
                value = 1.0 + 0.1 * noise
            elif leaf == "scale_shift_table":
                value = 0.3 * noise
            else:
                value = 0.1 * noise if leaf == "bias" else noise
            t.copy_(value)


def diffusers_components(cfg: DiTConfig, seed: int) -> dict[str, torch.nn.Module]:
    """The four diffusers DiT components with the sizes of `cfg` (2B or XL), randomly filled."""
    shared = dict(head_dim=cfg.head_dim, rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps, sliding_window=cfg.sliding_window)
    enc = dict(hidden_size=cfg.enc_hidden, intermediate_size=cfg.enc_intermediate, num_attention_heads=cfg.enc_heads,
               num_key_value_heads=cfg.enc_kv_heads, **shared)
    comps = dict(
        transformer=AceStepTransformer1DModel(
            hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
            in_channels=cfg.in_channels, audio_acoustic_hidden_dim=cfg.audio_acoustic_hidden_dim, patch_size=cfg.patch_size,
            layer_types=list(cfg.layer_types), encoder_hidden_size=cfg.encoder_hidden_size, is_turbo=cfg.is_turbo,
            model_version=cfg.model_version, **shared,
        ),
        condition_encoder=AceStepConditionEncoder(
            text_hidden_dim=cfg.text_hidden_dim, timbre_hidden_dim=cfg.timbre_hidden_dim,
            num_lyric_encoder_hidden_layers=cfg.num_lyric_encoder_hidden_layers,
            num_timbre_encoder_hidden_layers=cfg.num_timbre_encoder_hidden_layers, **enc,
        ),
        audio_tokenizer=AceStepAudioTokenizer(
            audio_acoustic_hidden_dim=cfg.audio_acoustic_hidden_dim, pool_window_size=cfg.pool_window_size, fsq_dim=cfg.fsq_dim,
            fsq_input_levels=list(cfg.fsq_input_levels), fsq_input_num_quantizers=cfg.fsq_input_num_quantizers,
            num_attention_pooler_hidden_layers=cfg.num_attention_pooler_hidden_layers, **enc,
        ),
        audio_token_detokenizer=AceStepAudioTokenDetokenizer(
            audio_acoustic_hidden_dim=cfg.audio_acoustic_hidden_dim, pool_window_size=cfg.pool_window_size,
            num_attention_pooler_hidden_layers=cfg.num_attention_pooler_hidden_layers, **enc,
        ),
    )
    gen = torch.Generator().manual_seed(seed)
    for module in comps.values():
        _randomize(module, gen)
        module.eval().requires_grad_(False)
    return comps


def save_repository(comps: dict[str, torch.nn.Module], folder: Path) -> Path:
    """As diffusers writes it: model_index.json, scheduler/ and one folder per component (the
    VAE and text encoder are left out, as save_pretrained does for None components)."""
    pipe = AceStepPipeline(
        vae=None, text_encoder=None, tokenizer=None, scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0),
        **comps,
    )
    pipe.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module", params=["2b", "xl"])
def repo(request, tmp_path_factory):
    cfg = tiny_config(xl=request.param == "xl", is_turbo=request.param == "2b")
    comps = diffusers_components(cfg, seed=21 if request.param == "2b" else 22)
    folder = save_repository(comps, tmp_path_factory.mktemp("diffusers") / f"acestep-{request.param}-diffusers")
    return cfg, comps, folder, load_dit(folder)


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def _edit_weights(path: Path, edit) -> None:
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


# -- the map, independently inverted ------------------------------------------------------------
def to_diffusers(key: str) -> tuple[str, str]:
    """Our parameter name -> (component folder, diffusers key), written out by hand."""
    if key == "null_condition_emb":
        return "condition_encoder", key
    top, rest = key.split(".", 1)
    if top == "decoder":
        rest = rest.replace("proj_in.1.", "proj_in_conv.").replace("proj_out.1.", "proj_out_conv.")
    for ours, theirs in (("q_proj", "to_q"), ("k_proj", "to_k"), ("v_proj", "to_v"), ("o_proj", "to_out.0"),
                         ("q_norm", "norm_q"), ("k_norm", "norm_k")):
        rest = rest.replace(f"_attn.{ours}.", f"_attn.{theirs}.")
    return OURS_TO_FOLDER[top], rest


def test_key_map_rows() -> None:
    km = KeyMap()
    assert km("transformer/layers.3.cross_attn.to_out.0.weight") == "decoder.layers.3.cross_attn.o_proj.weight"
    assert km("transformer/layers.0.self_attn.norm_k.weight") == "decoder.layers.0.self_attn.k_norm.weight"
    assert km("transformer/proj_out_conv.bias") == "decoder.proj_out.1.bias"
    assert km("condition_encoder/null_condition_emb") == "null_condition_emb"
    assert km("condition_encoder/silence_latent") is None
    assert km("audio_token_detokenizer/proj_out.weight") == "detokenizer.proj_out.weight"
    assert km("audio_token_detokenizer/layers.1.self_attn.to_q.weight") == "detokenizer.layers.1.self_attn.q_proj.weight"
    assert km("audio_tokenizer/quantizer.project_in.bias") == "tokenizer.quantizer.project_in.bias"
    for unknown in ("transformer/foo.weight", "transformer/layers.0.self_attn.to_qkv.weight",
                    "audio_tokenizer/proj_out.weight", "vae/encoder.conv.weight", "nofolder"):
        assert km(unknown) == unknown
    rename = km.for_file(Path("/repo/audio_token_detokenizer") / WEIGHTS)
    assert rename("norm.weight") == "detokenizer.norm.weight"


def test_layout_detection(repo, tmp_path: Path) -> None:
    _, _, folder, _ = repo
    assert is_diffusers_layout(folder)
    assert is_diffusers_layout(folder / "transformer")  # so plan() can say to pass the root
    assert not is_diffusers_layout(write_tiny_dit(tmp_path / "official", seed=3))
    assert not is_diffusers_layout(tmp_path)


def test_config_from_components(repo) -> None:
    cfg, _, folder, model = repo
    planned, files, _ = plan(folder)
    expected = dataclasses.replace(cfg, timbre_fix_frame=750)  # not in diffusers configs: the pipeline's 30 s
    assert planned == expected and model.config == expected
    assert planned.is_xl == cfg.is_xl
    assert [f.parent.name for f in files] == list(OURS_TO_FOLDER.values())


def test_every_tensor_lands_in_its_parameter(repo) -> None:
    _, comps, _, model = repo
    theirs = {folder: m.state_dict() for folder, m in comps.items()}
    used = set()
    for key, value in model.state_dict().items():
        folder, dkey = to_diffusers(key)
        assert torch.equal(value, theirs[folder][dkey]), f"{key} <- {folder}/{dkey}"
        used.add((folder, dkey))
    left = {(f, k) for f, sd in theirs.items() for k in sd} - used
    assert left == {("condition_encoder", "silence_latent")}


def test_decoder_forward_agrees(repo) -> None:
    cfg, comps, _, model = repo
    gen = torch.Generator().manual_seed(5)
    b, t = 2, 19  # odd: exercises the patch padding; 10 patches > sliding window 4
    x = torch.randn(b, t, cfg.audio_acoustic_hidden_dim, generator=gen)
    ctx = torch.randn(b, t, cfg.in_channels - cfg.audio_acoustic_hidden_dim, generator=gen)
    enc = torch.randn(b, 7, cfg.enc_hidden, generator=gen)
    tt, r = torch.tensor([0.9, 0.3]), torch.tensor([0.9, 0.1])
    with torch.no_grad():
        ours = model.decoder(x, tt, r, enc, ctx)
        ref = comps["transformer"](hidden_states=x, timestep=tt, timestep_r=r, encoder_hidden_states=enc,
                                   context_latents=ctx).sample
    assert ours.shape == ref.shape == x.shape
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def _condition_inputs(cfg: DiTConfig, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return dict(
        text_hidden_states=torch.randn(2, 5, cfg.text_hidden_dim, generator=gen),
        text_attention_mask=torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
        lyric_hidden_states=torch.randn(2, 9, cfg.text_hidden_dim, generator=gen),
        lyric_attention_mask=torch.tensor([[1] * 9, [1] * 6 + [0] * 3]),
        refer_audio_acoustic_hidden_states_packed=torch.randn(3, 12, cfg.timbre_hidden_dim, generator=gen),
        refer_audio_order_mask=torch.tensor([0, 1, 1]),
    )


def test_condition_encoder_agrees(repo) -> None:
    cfg, comps, _, model = repo
    inputs = _condition_inputs(cfg, torch.Generator().manual_seed(6))
    ce = comps["condition_encoder"]
    with torch.no_grad():
        lyr = (inputs["lyric_hidden_states"], inputs["lyric_attention_mask"])
        torch.testing.assert_close(model.encoder.lyric_encoder(*lyr), ce.lyric_encoder(*lyr), atol=1e-5, rtol=0)
        text = inputs["text_hidden_states"]
        torch.testing.assert_close(model.encoder.text_projector(text), ce.text_projector(text), atol=0, rtol=0)
        if cfg.is_xl:
            return  # XL: the timbre CLS token, see test_xl_timbre_cls_token_is_the_only_difference
        ours, ours_mask = model.encoder(**inputs)
        ref, ref_mask = ce(**inputs)
    assert torch.equal(ours_mask.bool(), ref_mask.bool())
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_xl_timbre_cls_token_is_the_only_difference(repo) -> None:
    """XL: our condition states differ from diffusers' (the CLS token upstream's XL timbre encoder
    prepends); with the 2B rule (no CLS) in our timbre encoder they agree in fp32."""
    cfg, comps, _, model = repo
    if not cfg.is_xl:
        pytest.skip("2B: the full condition encoder is compared in test_condition_encoder_agrees")
    inputs = _condition_inputs(cfg, torch.Generator().manual_seed(6))
    timbre = model.encoder.timbre_encoder
    with torch.no_grad():
        ref, ref_mask = comps["condition_encoder"](**inputs)
        ours, _ = model.encoder(**inputs)
        assert ours.shape == ref.shape and not torch.allclose(ours, ref, atol=1e-3)
        timbre.cfg = dataclasses.replace(cfg, encoder_hidden_size=None)  # is_xl False: no CLS token
        try:
            no_cls, mask = model.encoder(**inputs)
        finally:
            timbre.cfg = cfg
    assert torch.equal(mask.bool(), ref_mask.bool())
    torch.testing.assert_close(no_cls, ref, atol=1e-5, rtol=0)


def test_whole_dit_agrees_in_fp32(repo) -> None:
    """End to end: condition encoder → decoder, ours against diffusers' condition encoder feeding
    diffusers' transformer (XL: the timbre CLS token removed, as above)."""
    cfg, comps, _, model = repo
    gen = torch.Generator().manual_seed(8)
    inputs = _condition_inputs(cfg, gen)
    x = torch.randn(2, 13, cfg.audio_acoustic_hidden_dim, generator=gen)
    ctx = torch.randn(2, 13, cfg.in_channels - cfg.audio_acoustic_hidden_dim, generator=gen)
    tt, r = torch.tensor([1.0, 0.5]), torch.tensor([1.0, 0.5])
    timbre = model.encoder.timbre_encoder
    timbre.cfg = dataclasses.replace(cfg, encoder_hidden_size=None)
    try:
        with torch.no_grad():
            enc, _ = model.encoder(**inputs)
            ours = model.decoder(x, tt, r, enc, ctx)
            ref_enc, _ = comps["condition_encoder"](**inputs)
            ref = comps["transformer"](hidden_states=x, timestep=tt, timestep_r=r, encoder_hidden_states=ref_enc,
                                       context_latents=ctx).sample
    finally:
        timbre.cfg = cfg
    assert float(ref.abs().max()) > 0.1  # not a degenerate output
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_bf16_rope_rounding_is_a_known_difference(repo) -> None:
    """In bf16 our RoPE uses the bf16-rounded `inv_freq` (upstream's `.to(bf16)` of the buffer),
    diffusers full-precision frequencies: the angles differ by up to ~0.4 % per frequency, which is
    why the model comparison above is done in fp32."""
    _, _, folder, _ = repo
    half = load_dit(folder, dtype=torch.bfloat16)
    rotary = half.decoder.rotary_emb
    exact = rotary._inv_freq(None)
    assert rotary.inv_freq.dtype == torch.bfloat16 and torch.equal(rotary.inv_freq, exact.to(torch.bfloat16))
    relative = ((rotary.inv_freq.float() - exact) / exact).abs()
    assert 1e-4 < float(relative.max()) < 4e-3


def test_tokenizer_and_detokenizer_agree(repo) -> None:
    cfg, comps, _, model = repo
    w = cfg.pool_window_size
    x = torch.randn(2, 3, w, cfg.audio_acoustic_hidden_dim, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        q, idx = model.tokenizer(x)
        q_ref, idx_ref = comps["audio_tokenizer"](x)
        torch.testing.assert_close(q, q_ref, atol=1e-5, rtol=0)
        assert torch.equal(idx.long(), idx_ref.long())
        torch.testing.assert_close(model.detokenizer(q_ref), comps["audio_token_detokenizer"](q_ref), atol=1e-5, rtol=0)


def test_bf16_load(repo) -> None:
    _, _, folder, model = repo
    half = load_dit(folder, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    for k, v in half.state_dict().items():
        assert torch.equal(v, model.state_dict()[k].to(torch.bfloat16)), k


def test_sharded_component(repo, tmp_path: Path) -> None:
    _, comps, folder, model = repo
    root = _copy(folder, tmp_path)
    shutil.rmtree(root / "transformer")
    comps["transformer"].save_pretrained(str(root / "transformer"), max_shard_size="40KB")
    assert (root / "transformer" / f"{WEIGHTS}.index.json").is_file()
    assert not (root / "transformer" / WEIGHTS).exists()
    _, files, _ = plan(root)
    assert sum(f.parent.name == "transformer" for f in files) >= 2
    for k, v in load_dit(root).state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


def test_silence_latent(repo) -> None:
    _, comps, folder, _ = repo
    silence = read_silence_latent(folder)
    assert torch.equal(silence, comps["condition_encoder"].silence_latent)


# -- failures, each named ----------------------------------------------------------------------
def test_missing_component_folder(repo, tmp_path: Path) -> None:
    root = _copy(repo[2], tmp_path)
    shutil.rmtree(root / "audio_tokenizer")
    with pytest.raises(CheckpointError, match=r"no audio_tokenizer/ component"):
        load_dit(root)
    index = json.loads((root / "model_index.json").read_text())
    index["audio_tokenizer"] = [None, None]
    (root / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"model_index.json: lists no audio_tokenizer"):
        load_dit(root)


def test_missing_weights_file(repo, tmp_path: Path) -> None:
    root = _copy(repo[2], tmp_path)
    (root / "audio_token_detokenizer" / WEIGHTS).rename(root / "audio_token_detokenizer" / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"audio_token_detokenizer: no diffusion_pytorch_model.safetensors.*\.bin"):
        load_dit(root)


def test_unexpected_keys_are_named(repo, tmp_path: Path) -> None:
    root = _copy(repo[2], tmp_path)
    _edit_weights(root / "transformer" / WEIGHTS, lambda sd: sd.update({"foo.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensors 'transformer/foo.weight'"):
        load_dit(root)
    root = _copy(repo[2], tmp_path / "b")
    extra = "lyric_encoder.layers.7.self_attn.to_q.weight"
    _edit_weights(root / "condition_encoder" / WEIGHTS, lambda sd: sd.update({extra: torch.zeros(2, 2)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensors 'encoder.lyric_encoder.layers.7.self_attn.q_proj.weight'"):
        load_dit(root)


def test_missing_key_is_named(repo, tmp_path: Path) -> None:
    root = _copy(repo[2], tmp_path)
    _edit_weights(root / "condition_encoder" / WEIGHTS, lambda sd: sd.pop("null_condition_emb"))
    with pytest.raises(CheckpointError, match=r"missing tensors 'null_condition_emb'"):
        load_dit(root)


def _edit_config(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("folder", "changes", "message"),
    [
        ("condition_encoder", dict(head_dim=8), r"condition_encoder/config.json: head_dim = 8"),
        ("audio_token_detokenizer", dict(pool_window_size=4), r"audio_token_detokenizer/config.json: pool_window_size = 4"),
        ("transformer", dict(encoder_hidden_size=48), r"transformer/config.json: encoder_hidden_size 48"),
        ("audio_tokenizer", dict(hidden_size="big"), r"audio_tokenizer/config.json: hidden_size must be a positive integer"),
        ("transformer", dict(attention_bias=True), r"transformer/config.json: attention_bias is true"),
        ("transformer", dict(_class_name="AceStepDiTModel"), r"transformer/config.json: _class_name 'AceStepDiTModel'"),
        ("condition_encoder", dict(layer_types=["full_attention"] * 2), r"condition_encoder/config.json: the lyric encoder's layer types"),
    ],
)
def test_inconsistent_config_is_named(repo, tmp_path: Path, folder: str, changes: dict, message: str) -> None:
    root = _copy(repo[2], tmp_path)
    _edit_config(root / folder / "config.json", **changes)
    with pytest.raises(CheckpointError, match=message):
        load_dit(root)


def test_unreadable_config_and_index(repo, tmp_path: Path) -> None:
    root = _copy(repo[2], tmp_path)
    (root / "audio_tokenizer" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"audio_tokenizer/config.json: unreadable JSON"):
        load_dit(root)
    _edit_config(root / "model_index.json", _class_name="StableAudioPipeline")
    with pytest.raises(CheckpointError, match=r"model_index.json: _class_name 'StableAudioPipeline'"):
        load_dit(root)


def test_component_folder_instead_of_root(repo) -> None:
    folder = repo[2]
    with pytest.raises(CheckpointError, match=r"transformer component of a diffusers repository; load the repository root"):
        load_dit(folder / "transformer")
