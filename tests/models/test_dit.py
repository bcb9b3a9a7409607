"""The DiT family: full-size manifests, the tiny preset, and forward-pass properties."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from songstep.config import DiTConfig, preset
from songstep.loading.checkpoint import build_meta
from songstep.testing.tiny import tiny_dit

REF = Path(__file__).resolve().parents[1] / "fixtures" / "reference"
MANIFESTS = sorted((REF / "manifests").glob("*.json"))
TOTALS = {False: 2_393_872_518, True: 4_987_310_726}


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.stem for p in MANIFESTS])
def test_manifest_names_shapes_and_totals(path: Path) -> None:
    manifest = json.loads(path.read_text())
    cfg = DiTConfig.from_dict(manifest["config"])
    model = build_meta(cfg)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: shape for k, (shape, _dtype) in manifest["tensors"].items()}
    assert sorted(set(ours) ^ set(theirs)) == []
    assert ours == theirs
    total = sum(v.numel() for v in model.state_dict().values())
    assert total == manifest["total_params"] == TOTALS[cfg.is_xl]
    assert len(ours) == manifest["num_tensors"]
    buffers = {n for n, _ in model.named_buffers()}
    assert buffers <= set(manifest["non_persistent_buffers"])


@pytest.mark.parametrize("variant", ["turbo", "base", "sft", "xl-turbo", "xl-base", "xl-sft"])
def test_presets_match_manifests(variant: str) -> None:
    manifest = json.loads((REF / "manifests" / f"{variant.replace('-', '_')}.json").read_text())
    cfg = preset(variant)
    ref = DiTConfig.from_dict(manifest["config"])
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "encoder_hidden_size", "layer_types", "is_turbo"):
        assert getattr(cfg, field) == getattr(ref, field), field
    model = build_meta(cfg)
    assert sum(v.numel() for v in model.state_dict().values()) == TOTALS[cfg.is_xl]


@pytest.mark.parametrize("family,seed", [("turbo", 1001), ("base", 1002), ("xl_turbo", 1003), ("xl_base", 1004)])
def test_tiny_preset_reproduces_fixture_checkpoints(family: str, seed: int) -> None:
    cfg = DiTConfig.from_file(REF / "tiny" / family / "config.json")
    model = tiny_dit(seed, config=cfg)
    ref = load_file(str(REF / "tiny" / family / "model.safetensors"))
    ours = model.state_dict()
    assert set(ours) == set(ref)
    assert all(torch.equal(ours[k], ref[k]) for k in ref)


def _decoder_inputs(model, b=2, t=9, lenc=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(b, t, 64, generator=g),
        timestep=torch.tensor([0.8, 0.3])[:b],
        timestep_r=torch.tensor([0.8, 0.3])[:b],
        encoder_hidden_states=torch.randn(b, lenc, model.config.enc_hidden, generator=g),
        context_latents=torch.randn(b, t, 128, generator=g),
    )


@pytest.mark.parametrize("xl", [False, True])
def test_decoder_odd_length_and_cross_cache(xl: bool) -> None:
    model = tiny_dit(3, xl=xl)
    x = _decoder_inputs(model)
    with torch.no_grad():
        v = model.decoder(**x)
        kv = model.decoder.cross_kv(x["encoder_hidden_states"])
        v_cached = model.decoder(**{k: x[k] for k in x if k != "encoder_hidden_states"}, cross_kv=kv)
    assert v.shape == (2, 9, 64)
    assert torch.equal(v, v_cached)
    assert torch.isfinite(v).all()


def test_items_are_independent_and_padding_is_local() -> None:
    """Batch items do not interact (up to fp32 GEMM blocking differences between batch sizes)."""
    model = tiny_dit(4)
    x = _decoder_inputs(model)
    with torch.no_grad():
        both = model.decoder(**x)
        first = model.decoder(**{k: v[:1] for k, v in x.items()})
    torch.testing.assert_close(both[:1], first, atol=1e-5, rtol=1e-5)


def test_timestep_r_branch_is_used() -> None:
    model = tiny_dit(5)
    x = _decoder_inputs(model)
    with torch.no_grad():
        a = model.decoder(**x)
        b = model.decoder(**{**x, "timestep_r": torch.tensor([0.5, 0.1])})
    assert (a - b).abs().max() > 1e-4


def test_sliding_window_limits_receptive_field() -> None:
    """With every layer sliding (window w) and no cross-attention influence, changing frame 0 can
    only move outputs within depth·w tokens."""
    model = tiny_dit(6, num_hidden_layers=2, layer_types=("sliding_attention",) * 2, sliding_window=1)
    x = _decoder_inputs(model, b=1, t=40)
    y = dict(x)
    y["hidden_states"] = x["hidden_states"].clone()
    y["hidden_states"][:, :2] += 1.0
    with torch.no_grad():
        d = (model.decoder(**x) - model.decoder(**y)).abs().amax(dim=(0, 2))
    # token 0 (frames 0-1) reaches tokens ≤ 2 after two layers → frames ≤ 5
    assert d[:6].max() > 0
    assert d[6:].max() == 0


def test_fsq_indices_roundtrip() -> None:
    model = tiny_dit(7)
    x = torch.randn(2, 23, 64, generator=torch.Generator().manual_seed(1))
    silence = torch.randn(1, 30, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        q, idx, pmask = model.tokenize(x, silence, torch.ones(2, 23))
        q2 = model.tokenizer.quantizer.get_output_from_indices(idx)
        hints = model.codes_to_hints(idx[..., 0])
    assert idx.dtype == torch.int32 and idx.shape == (2, 5, 1)
    assert int(idx.min()) >= 0 and int(idx.max()) < 64_000
    torch.testing.assert_close(q, q2, atol=1e-6, rtol=1e-6)
    assert hints.shape == (2, 25, 64)
    assert pmask.tolist() == [[1.0] * 5] * 2


def test_bf16_buffers_round_like_upstream() -> None:
    model = tiny_dit(8).to(torch.bfloat16)
    model.reset_buffers()
    clamp = model.tokenizer.quantizer.soft_clamp_input_value
    assert clamp.dtype == torch.bfloat16
    assert float(clamp[0]) == 1.140625
    assert model.decoder.rotary_emb.inv_freq.dtype == torch.bfloat16
