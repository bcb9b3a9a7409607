"""Adapters on the DiT decoder: peft round trip, diffusers / ComfyUI / LyCORIS spellings, LoKr,
scale / disable / unload without touching base weights, strict loading."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

peft = pytest.importorskip("peft")

from songstep import lora  # noqa: E402
from songstep.errors import CheckpointError  # noqa: E402
from songstep.testing.tiny import tiny_dit  # noqa: E402

PREFIX = "base_model.model."


@pytest.fixture
def dit():
    return tiny_dit(0)


def _inputs(dit):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 12, 64, generator=g)
    ctx = torch.randn(1, 12, 128, generator=g)
    enc = torch.randn(1, 7, dit.config.enc_hidden, generator=g)
    t = torch.tensor([0.6])
    return x, t, t, enc, ctx


def _out(dit):
    with torch.no_grad():
        return dit.decoder(*_inputs(dit))


def _lora_cfg(r=4, alpha=8.0, **kw):
    return peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=list(lora.TARGET_MODULES), init_lora_weights=False, **kw)


def _saved(dit, tmp_path, config, name="x"):
    """A trained-looking adapter written as a peft folder; returns (folder, output with it)."""
    lora.add_adapter(dit, config, name)
    out = _out(dit)
    folder = lora.save_adapter(dit, tmp_path / name, name)
    lora.unload(dit, name)
    return folder, out


def _base_state(dit):
    return {k: v.clone() for k, v in dit.state_dict().items()}


def test_peft_round_trip_and_peft_reads_our_files(dit, tmp_path) -> None:
    base = _out(dit)
    folder, expected = _saved(dit, tmp_path, _lora_cfg())
    assert not torch.equal(expected, base)
    keys = load_file(str(folder / lora.WEIGHTS_NAME))
    assert len(keys) == 2 * 4 * 2 * dit.config.num_hidden_layers  # A/B × q,k,v,o × self/cross × layers
    assert f"{PREFIX}layers.0.self_attn.q_proj.lora_A.weight" in keys
    name = lora.load_adapter(dit, folder)
    assert torch.equal(_out(dit), expected)
    # peft itself loads the folder onto a plain decoder (upstream's PeftModel.from_pretrained path)
    lora.unload(dit, name)
    model = peft.PeftModel.from_pretrained(copy.deepcopy(dit.decoder), str(folder))
    with torch.no_grad():
        torch.testing.assert_close(model(*_inputs(dit)), expected, rtol=0, atol=1e-6)


def test_scale_touches_only_adapter_weights(dit, tmp_path) -> None:
    before = _base_state(dit)
    base = _out(dit)
    folder, full = _saved(dit, tmp_path, _lora_cfg(alpha=8.0))
    name = lora.load_adapter(dit, folder, scale=0.5)
    layer = dit.decoder.layers[0].self_attn.q_proj
    assert layer.scaling[name] == pytest.approx(0.5 * 8.0 / 4)
    half = _out(dit)
    assert not torch.equal(half, base) and not torch.equal(half, full)
    for scale in (0.0, 2.0, 1.0):
        lora.set_scale(dit, scale)
    assert torch.equal(_out(dit), full)
    lora.set_scale(dit, 0.0)
    assert torch.equal(_out(dit), base)
    lora.set_scale(dit, 1.0)
    lora.set_enabled(dit, False)
    assert torch.equal(_out(dit), base)
    lora.set_enabled(dit, True)
    state = dit.state_dict()
    for key, value in before.items():
        wrapped = key.replace("_proj.weight", "_proj.base_layer.weight")
        assert torch.equal(state.get(key, state.get(wrapped)), value), key
    lora.unload(dit)
    assert set(dit.state_dict()) == set(before) and all(torch.equal(dit.state_dict()[k], v) for k, v in before.items())
    assert type(dit.decoder.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert torch.equal(_out(dit), base)


def test_two_adapters_and_unloading_one(dit, tmp_path) -> None:
    a, out_a = _saved(dit, tmp_path, _lora_cfg(r=4), "a")
    b, _ = _saved(dit, tmp_path, _lora_cfg(r=2, alpha=4.0), "b")
    lora.load_adapter(dit, a)
    lora.load_adapter(dit, b, scale=0.7)
    both = _out(dit)
    assert not torch.equal(both, out_a)
    assert [s["name"] for s in lora.status(dit)] == ["a", "b"]
    lora.set_enabled(dit, False, "b")
    assert torch.equal(_out(dit), out_a)
    lora.set_enabled(dit, True, "b")
    lora.unload(dit, "b")
    assert torch.equal(_out(dit), out_a) and [s["name"] for s in lora.status(dit)] == ["a"]


def test_lora_and_lokr_together(dit, tmp_path) -> None:
    base = _out(dit)
    a, out_a = _saved(dit, tmp_path, _lora_cfg(), "a")
    k, out_k = _saved(dit, tmp_path, peft.LoKrConfig(r=4, alpha=4, target_modules=list(lora.TARGET_MODULES),
                                                       init_weights=False), "k")
    lora.load_adapter(dit, a)
    lora.load_adapter(dit, k)
    both = _out(dit)
    assert not torch.equal(both, out_a) and not torch.equal(both, out_k)
    lora.unload(dit, "a")  # the inner (first-injected) adapter goes; the LoKr stays
    torch.testing.assert_close(_out(dit), out_k, rtol=0, atol=1e-6)
    lora.unload(dit)
    assert torch.equal(_out(dit), base) and type(dit.decoder.layers[0].self_attn.q_proj) is torch.nn.Linear


def _respell(keys: dict[str, torch.Tensor], fn) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in keys.items():
        module, part = key[len(PREFIX):].rsplit(".", 2)[0], ".".join(key.rsplit(".", 2)[1:])
        out.update(fn(module, part, value))
    return out


SPELLINGS = {
    "diffusers": lambda m, p, v: {f"transformer.{m}.{p}": v},
    "diffusers-old": lambda m, p, v: {f"decoder.{m}.lora.{'down' if p == 'lora_A.weight' else 'up'}.weight": v},
    "comfyui": lambda m, p, v: {
        f"lora_unet_{m.replace('.', '_')}.{'lora_down' if p == 'lora_A.weight' else 'lora_up'}.weight": v,
        f"lora_unet_{m.replace('.', '_')}.alpha": torch.tensor(8.0),
    },
    "comfyui-decoder": lambda m, p, v: {
        f"lora_unet_decoder_{m.replace('.', '_')}.{'lora_down' if p == 'lora_A.weight' else 'lora_up'}.weight": v},
    "comfyui-dots": lambda m, p, v: {f"diffusion_model.decoder.{m}.{p}": v, f"diffusion_model.decoder.{m}.alpha": torch.tensor(8.0)},
}


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_diffusers_and_comfyui_lora_spellings(dit, tmp_path, spelling) -> None:
    # alpha 8 with rank 4: files without an alpha key mean alpha = rank, so scale those by 2 here
    folder, expected = _saved(dit, tmp_path, _lora_cfg(r=4, alpha=8.0 if spelling in ("comfyui", "comfyui-dots") else 4.0))
    keys = _respell(load_file(str(folder / lora.WEIGHTS_NAME)), SPELLINGS[spelling])
    path = tmp_path / f"{spelling}.safetensors"
    save_file(keys, str(path))
    name = lora.load_adapter(dit, path)
    torch.testing.assert_close(_out(dit), expected, rtol=0, atol=1e-6)
    assert lora.status(dit)[0]["kind"] == "lora" and name == spelling.replace("-", "_")


@pytest.mark.parametrize("rank,decomposed", [(4, False), (2, True)])
def test_lokr_peft_folder_and_lycoris_spelling(dit, tmp_path, rank, decomposed) -> None:
    # width 64 factors as 8 × 8: rank 2 < 8/2 stores w2 as two low-rank factors
    config = peft.LoKrConfig(r=rank, alpha=rank if not decomposed else 3.0, target_modules=list(lora.TARGET_MODULES),
                             init_weights=False)
    folder, expected = _saved(dit, tmp_path, config)
    keys = load_file(str(folder / lora.WEIGHTS_NAME))
    assert any(k.endswith("lokr_w2_a") for k in keys) == decomposed
    lora.load_adapter(dit, folder)
    assert torch.equal(_out(dit), expected) and lora.status(dit)[0]["kind"] == "lokr"
    lora.unload(dit)
    alpha = {f"lycoris_{k[len(PREFIX):].rsplit('.', 1)[0].replace('.', '_')}.alpha": torch.tensor(3.0) for k in keys}
    lycoris = {f"lycoris_{k[len(PREFIX):].rsplit('.', 1)[0].replace('.', '_')}.{k.rsplit('.', 1)[1]}": v for k, v in keys.items()}
    path = tmp_path / "lycoris.safetensors"
    save_file({**lycoris, **(alpha if decomposed else {})}, str(path))
    lora.load_adapter(dit, path)
    torch.testing.assert_close(_out(dit), expected, rtol=0, atol=1e-6)


def test_strict_loading(dit, tmp_path) -> None:
    folder, _ = _saved(dit, tmp_path, _lora_cfg())
    keys = load_file(str(folder / lora.WEIGHTS_NAME))
    bad = dict(keys)
    bad["encoder.lyric_encoder.layers.0.self_attn.q_proj.lora_A.weight"] = torch.zeros(4, 64)
    save_file(bad, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError, match="encoder.lyric_encoder.layers.0.self_attn.q_proj.lora_A.weight"):
        lora.load_adapter(dit, tmp_path / "extra.safetensors")
    bad = dict(keys)
    bad[f"{PREFIX}layers.0.self_attn.q_proj.dora_scale"] = torch.zeros(1)
    save_file(bad, str(tmp_path / "dora.safetensors"))
    with pytest.raises(CheckpointError, match="dora_scale"):
        lora.load_adapter(dit, tmp_path / "dora.safetensors")
    # a peft folder whose config and tensors disagree: named, and nothing stays attached
    shaped = dict(keys)
    shaped[f"{PREFIX}layers.1.cross_attn.v_proj.lora_A.weight"] = torch.zeros(3, 64)
    save_file(shaped, str(folder / lora.WEIGHTS_NAME))
    with pytest.raises(CheckpointError, match=r"layers.1.cross_attn.v_proj.lora_A.weight' has shape \[3, 64\]"):
        lora.load_adapter(dit, folder)
    missing = {k: v for k, v in keys.items() if "layers.0.self_attn.k_proj" not in k}
    save_file(missing, str(folder / lora.WEIGHTS_NAME))
    with pytest.raises(CheckpointError, match="missing tensors.*layers.0.self_attn.k_proj"):
        lora.load_adapter(dit, folder)
    assert lora.status(dit) == [] and type(dit.decoder.layers[0].self_attn.q_proj) is torch.nn.Linear
    (tmp_path / "adapter.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(CheckpointError, match="safetensors files only"):
        lora.load_adapter(dit, tmp_path / "adapter.bin")
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt"):
        lora.load_adapter(dit, tmp_path / "broken.safetensors")
    (folder / lora.CONFIG_NAME).write_text(json.dumps({"peft_type": "IA3", "target_modules": ["q_proj"]}))
    with pytest.raises(CheckpointError):
        lora.load_adapter(dit, folder)


def test_parse_spec() -> None:
    assert lora.parse_spec("out/adapter:0.5") == ("out/adapter", 0.5)
    assert lora.parse_spec("out/adapter") == ("out/adapter", 1.0)
    assert lora.parse_spec("C:/loras/x.safetensors") == ("C:/loras/x.safetensors", 1.0)
    assert lora.parse_spec("weird:name:-1") == ("weird:name", -1.0)
