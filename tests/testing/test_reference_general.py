"""`run_case` depends on nothing but the case data.

Each original case kind is copied under another name into a new folder whose tiny checkpoint has
another config (hidden size, heads, window, depth) and whose inputs have another batch size and
lengths. The expected outputs come from an independent path: the model in float64 with an eager
(matmul + softmax) attention instead of SDPA.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import songstep.models.attention as attention
from songstep.config import tiny_config
from songstep.loading.checkpoint import load_dit
from songstep.testing.reference import load_index, run_case
from songstep.testing.tiny import write_tiny_dit
from tests.testing.test_reference import REF, assert_matches


def eager_attend(q, k, v, mask):
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask.dense, torch.finfo(scores.dtype).min)
    return scores.softmax(-1) @ v


def _inputs(cfg, kind: str, gen: torch.Generator) -> dict[str, torch.Tensor]:
    b, t, lt, ll, n_ref, ref_len = 3, 17, 6, 11, 4, 9
    e = cfg.enc_hidden

    def rn(*shape):
        return torch.randn(*shape, generator=gen)

    text_mask = torch.ones(b, lt, dtype=torch.bool)
    text_mask[1, 4:] = False
    lyric_mask = torch.ones(b, ll, dtype=torch.bool)
    lyric_mask[2, 7:] = False
    enc = {
        "text_hidden_states": rn(b, lt, cfg.text_hidden_dim),
        "text_attention_mask": text_mask,
        "lyric_hidden_states": rn(b, ll, cfg.text_hidden_dim),
        "lyric_attention_mask": lyric_mask,
        "refer_audio_acoustic_hidden_states_packed": rn(n_ref, ref_len, cfg.timbre_hidden_dim),
        "refer_audio_order_mask": torch.tensor([0, 1, 1, 2]),
    }
    if kind == "encoder":
        return enc
    if kind == "decoder":
        return {
            "hidden_states": rn(b, t, 64),
            "timestep": torch.tensor([0.9, 0.5, 0.125]),
            "timestep_r": torch.tensor([0.7, 0.5, 0.0]),
            "attention_mask": torch.ones(b, t),
            "encoder_hidden_states": rn(b, 13, e),
            "encoder_attention_mask": torch.ones(b, 13, dtype=torch.bool),
            "context_latents": rn(b, t, 128),
        }
    if kind == "fsq":
        return {"x": rn(2, 13, 64), "silence_latent": rn(1, 40, 64), "attention_mask": torch.ones(2, 13)}
    chunk = torch.ones(b, t, 64, dtype=torch.bool)
    chunk[1, 5:9] = False
    return {
        **enc,
        "src_latents": rn(b, t, 64),
        "silence_latent": rn(1, 40, 64),
        "chunk_masks": chunk,
        "is_covers": torch.tensor([True, False, True]),
    }


def _expected(folder: Path, golden_dir: Path, case: str, monkeypatch) -> dict[str, torch.Tensor]:
    """Run the same case through the float64 eager path."""
    monkeypatch.setattr(attention, "attend", eager_attend)
    index = json.loads((golden_dir / "index.json").read_text())
    index["dtype"] = "float64"
    (golden_dir / "index.json").write_text(json.dumps(index))
    try:
        return {k: v for k, v in run_case(golden_dir, case).items()}
    finally:
        index["dtype"] = "float32"
        (golden_dir / "index.json").write_text(json.dumps(index))
        monkeypatch.undo()


@pytest.mark.parametrize("kind", ["encoder", "decoder", "fsq", "prepare_condition"])
@pytest.mark.parametrize("xl", [False, True])
def test_renamed_case_with_other_config(tmp_path: Path, kind: str, xl: bool, monkeypatch) -> None:
    original = load_index(REF / "golden" / ("xl_turbo" if xl else "turbo"))
    entry = next(e for e in original["cases"] if e["case"] == kind)
    cfg = tiny_config(
        xl=xl,
        hidden_size=40 if not xl else 56,
        num_attention_heads=2 if not xl else 4,
        num_key_value_heads=1,
        head_dim=20 if not xl else 16,
        num_hidden_layers=3,
        sliding_window=3,
        text_hidden_dim=24,
        fsq_dim=40 if not xl else 48,
        num_lyric_encoder_hidden_layers=3,
        **({"encoder_hidden_size": 48, "encoder_num_attention_heads": 2, "encoder_num_key_value_heads": 2} if xl else {}),
    )
    family = f"other_{kind}"
    write_tiny_dit(tmp_path / "tiny" / family, seed=99, config=cfg, layout="sharded-fp32" if xl else "single-bf16")
    golden_dir = tmp_path / "golden" / family
    golden_dir.mkdir(parents=True)
    case = f"renamed_{kind}_copy"
    inputs = _inputs(cfg, kind, torch.Generator().manual_seed(5))
    declared = [k for k in entry["tensors"] if k.startswith("out.")]
    new_entry = {**entry, "case": case, "file": f"{case}.safetensors", "tensors": {k: {} for k in declared}}
    index = {**{k: v for k, v in original.items() if k != "cases"}, "cases": [new_entry]}
    index["tiny_checkpoint"] = {"dir": f"tiny/{family}"}
    (golden_dir / "index.json").write_text(json.dumps(index))
    save_file({f"in.{k}": v for k, v in inputs.items()}, str(golden_dir / new_entry["file"]))
    expected = _expected(tmp_path, golden_dir, case, monkeypatch)
    assert set(declared) <= set(expected)
    new_entry["tensors"] = {k: {"shape": list(expected[k].shape)} for k in declared}
    (golden_dir / "index.json").write_text(json.dumps(index))
    ref = {k: (v.float() if v.is_floating_point() else v) for k, v in expected.items() if k in declared}
    out = run_case(golden_dir, case)
    assert set(out) == set(declared)
    assert out[declared[0]].dtype != torch.float64  # the runner used the index's fp32, not the fp64 path
    assert_matches(out, ref, loop=False)
    assert load_dit(tmp_path / "tiny" / family).config.hidden_size == cfg.hidden_size
