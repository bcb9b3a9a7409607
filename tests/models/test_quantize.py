"""int8 weight-only DiT (torchao): every decoder-layer linear is replaced, the rest is kept, and
the velocity stays close to the full-precision one."""

from __future__ import annotations

import pytest
import torch

from songstep.errors import InvalidRequest
from songstep.models.quantize import quantize_dit
from songstep.testing.tiny import tiny_dit


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="unknown quantization 'fp4'"):
        quantize_dit(tiny_dit(), "fp4")


def test_int8_weight_only() -> None:
    pytest.importorskip("torchao")
    model = tiny_dit(seed=2)
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 30, 64, generator=g)
    ctx = torch.randn(2, 30, 128, generator=g)
    enc = torch.randn(2, 9, cfg.enc_hidden, generator=g)
    t = torch.tensor([0.8, 0.4])
    embedder = model.decoder.condition_embedder.weight.clone()
    with torch.no_grad():
        ref = model.decoder(x, t, t, enc, ctx)
        replaced = quantize_dit(model, "int8")
        out = model.decoder(x, t, t, enc, ctx)
    assert replaced == cfg.num_hidden_layers * 11  # q/k/v/o of two attentions + three MLP projections
    assert type(model.decoder.layers[0].mlp.up_proj.weight).__name__ != "Parameter"
    assert torch.equal(model.decoder.condition_embedder.weight, embedder)
    err = (out - ref).abs().max() / ref.abs().max()
    assert 0 < err < 0.03, float(err)


def test_missing_torchao_is_a_clear_error(monkeypatch) -> None:
    import sys

    from songstep.errors import SongstepError

    monkeypatch.setitem(sys.modules, "torchao.quantization", None)  # as if torchao were not installed
    with pytest.raises(SongstepError, match=r"needs torchao: pip install 'songstep\[quant\]'"):
        quantize_dit(tiny_dit(), "int8")


def test_pipeline_option(tiny_tree) -> None:
    """`quantize="int8"` through `Pipeline.from_pretrained`: the same song within int8's error."""
    pytest.importorskip("torchao")
    from songstep.pipeline import Pipeline

    kwargs = dict(duration=10, seed=4, steps=2)
    plain = Pipeline.from_pretrained(tiny_tree, variant="turbo", device="cpu", lm="none").generate("pop", "", **kwargs)
    quant = Pipeline.from_pretrained(tiny_tree, variant="turbo", device="cpu", lm="none", quantize="int8")
    assert type(quant.components.dit.decoder.layers[0].self_attn.q_proj.weight).__name__ != "Parameter"
    latents = quant.generate("pop", "", **kwargs).latents
    err = (latents - plain.latents).abs().max() / plain.latents.abs().max()
    assert 0 < err < 0.03, float(err)
