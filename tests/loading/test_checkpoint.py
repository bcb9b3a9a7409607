"""Loading DiT checkpoints: layouts, dtypes, and every failure named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from songstep.errors import CheckpointError, ModelNotFound
from songstep.loading.checkpoint import load_dit
from songstep.testing.tiny import tiny_dit, write_tiny_dit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "reference"


@pytest.fixture(scope="module")
def tiny_2b(tmp_path_factory) -> Path:
    return write_tiny_dit(tmp_path_factory.mktemp("ckpt") / "turbo", seed=11)


@pytest.fixture(scope="module")
def tiny_xl(tmp_path_factory) -> Path:
    return write_tiny_dit(tmp_path_factory.mktemp("ckpt") / "xl", seed=12, xl=True)


def test_official_layouts_on_disk(tiny_2b: Path, tiny_xl: Path) -> None:
    single = load_file(str(tiny_2b / "model.safetensors"))
    assert {t.dtype for t in single.values()} == {torch.bfloat16}
    index = json.loads((tiny_xl / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2 and not (tiny_xl / "model.safetensors").exists()
    for shard in shards:
        assert {t.dtype for t in load_file(str(tiny_xl / shard)).values()} == {torch.float32}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("which", ["2b", "xl"])
def test_load_in_each_dtype(tiny_2b: Path, tiny_xl: Path, which: str, dtype: torch.dtype) -> None:
    folder = tiny_2b if which == "2b" else tiny_xl
    model = load_dit(folder, dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {dtype}
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert model.decoder.rotary_emb.inv_freq.dtype == dtype
    expected = tiny_dit(11 if which == "2b" else 12, xl=which == "xl").state_dict()
    for k, v in model.state_dict().items():
        src = expected[k].to(torch.bfloat16) if which == "2b" else expected[k]
        assert torch.equal(v, src.to(dtype)), k
    x = torch.randn(1, 6, 64).to(dtype)
    with torch.no_grad():
        v = model.decoder(x, torch.tensor([0.5]).to(dtype), torch.tensor([0.5]).to(dtype),
                          torch.randn(1, 4, model.config.enc_hidden).to(dtype), torch.randn(1, 6, 128).to(dtype))
    assert v.dtype == dtype and torch.isfinite(v).all()


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def _rewrite(folder: Path, edit) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_missing_tensor(tiny_2b, tmp_path):
    folder = _copy(tiny_2b, tmp_path)
    _rewrite(folder, lambda t: t.pop("decoder.norm_out.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensors 'decoder\.norm_out\.weight'"):
        load_dit(folder)


def test_unexpected_tensor(tiny_2b, tmp_path):
    folder = _copy(tiny_2b, tmp_path)
    _rewrite(folder, lambda t: t.update({"decoder.extra.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensors 'decoder\.extra\.weight' in model\.safetensors"):
        load_dit(folder)


def test_wrong_shape(tiny_2b, tmp_path):
    folder = _copy(tiny_2b, tmp_path)
    _rewrite(folder, lambda t: t.update({"null_condition_emb": torch.zeros(1, 1, 3, dtype=torch.bfloat16)}))
    with pytest.raises(CheckpointError, match=r"'null_condition_emb' in model\.safetensors has shape \[1, 1, 3\], expected \[1, 1, 64\]"):
        load_dit(folder)


def test_truncated_file(tiny_2b, tmp_path):
    folder = _copy(tiny_2b, tmp_path)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt or truncated"):
        load_dit(folder)


def test_corrupt_header(tiny_2b, tmp_path):
    folder = _copy(tiny_2b, tmp_path)
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:40] = b"\xff" * 32
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt or truncated"):
        load_dit(folder)


def test_missing_shard(tiny_xl, tmp_path):
    folder = _copy(tiny_xl, tmp_path)
    shard = sorted(folder.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=rf"shard {shard.name} listed but missing"):
        load_dit(folder)


def test_unreadable_config(tiny_2b, tmp_path):
    folder = _copy(tiny_2b, tmp_path)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json.*unreadable config\.json"):
        load_dit(folder)


def test_unknown_model_type(tiny_2b, tmp_path):
    folder = _copy(tiny_2b, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "llama"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"unknown model_type 'llama'"):
        load_dit(folder)


def test_no_weights_and_no_folder(tiny_2b, tmp_path):
    folder = _copy(tiny_2b, tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no model\.safetensors or model\.safetensors\.index\.json"):
        load_dit(folder)
    with pytest.raises(ModelNotFound):
        load_dit(tmp_path / "nope")


def test_no_pickle_in_loader() -> None:
    import songstep.loading.checkpoint as mod

    text = Path(mod.__file__).read_text()
    assert "torch.load" not in text and "trust_remote_code" not in text


@pytest.mark.parametrize("family", ["turbo", "xl_turbo"])
def test_saved_config_has_only_keys_upstream_writes(tmp_path, family) -> None:
    """`save_dit` writes a subset of the keys upstream's own `AceStepConfig.to_dict()` wrote for the
    reference fixtures, never a `null` where upstream has a value or omits the key (the 2B configs
    omit the XL-only `encoder_*` fields); diffusers' converter reads those with
    `config.get(key, config[fallback])`, which must give a number."""
    fixture = json.loads((FIXTURES / "tiny" / family / "config.json").read_text())
    write_tiny_dit(tmp_path, 0, xl=family.startswith("xl"))
    ours = json.loads((tmp_path / "config.json").read_text())
    assert set(ours) <= set(fixture), sorted(set(ours) - set(fixture))
    assert all(fixture[k] is None for k, v in ours.items() if v is None)
    for key, fallback in (("encoder_hidden_size", "hidden_size"), ("encoder_intermediate_size", "intermediate_size"),
                          ("encoder_num_attention_heads", "num_attention_heads"),
                          ("encoder_num_key_value_heads", "num_key_value_heads")):
        assert isinstance(ours.get(key, ours[fallback]), int)
        assert (key in ours) == (key in fixture)
