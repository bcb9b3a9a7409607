"""Attention backends agree: SDPA (default) vs a plain matmul-softmax, and on CUDA FlexAttention
for the sliding-window layers vs PyTorch's math kernel."""

from __future__ import annotations

import pytest
import torch

import songstep.models.attention as attention
from songstep.config import preset
from songstep.testing.tiny import tiny_dit
from tests.testing.test_reference_general import eager_attend as _eager


def _inputs(model, t=61, seed=0, device="cpu", dtype=torch.float32):
    g = torch.Generator(device=device).manual_seed(seed)
    kw = dict(generator=g, device=device, dtype=dtype)
    tt = torch.full((1,), 0.7, device=device, dtype=dtype)
    return (torch.randn(1, t, 64, **kw), tt, tt, torch.randn(1, 9, model.config.enc_hidden, **kw), torch.randn(1, t, 128, **kw))


def test_sdpa_matches_eager_on_cpu(monkeypatch) -> None:
    model = tiny_dit(1)
    x = _inputs(model)
    with torch.no_grad():
        a = model.decoder(*x)
        monkeypatch.setattr(attention, "attend", _eager)
        b = model.decoder(*x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_fully_masked_rows_average_instead_of_nan() -> None:
    """A long lyric pad under a sliding window leaves rows with no valid key: upstream's additive
    dtype-min mask makes them attend uniformly; they must stay finite."""
    model = tiny_dit(2)
    lyrics = torch.randn(1, 20, model.config.text_hidden_dim)
    mask = torch.zeros(1, 20, dtype=torch.bool)
    mask[0, :3] = True
    with torch.no_grad():
        out = model.encoder.lyric_encoder(lyrics, mask)
    assert torch.isfinite(out).all()


def test_backend_names() -> None:
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention.set_backend("magic")
    attention.set_backend("sdpa")
    assert attention.get_backend() == "sdpa"
    attention.set_backend("auto")


@pytest.mark.gpu
def test_flex_matches_math_kernel_on_cuda() -> None:
    """Measured on an H100 at full size (2B, 1000 tokens, fp32): |flex − math| 4.1e-4 and
    |SDPA − math| 9.3e-4 on outputs up to 6.5 (TF32 matmuls)."""
    from benchmarks.dit_forward import random_model  # the benchmark's fast on-device init

    model = random_model(preset("turbo"), torch.device("cuda"), torch.float32)
    x = _inputs(model, t=2000, device="cuda")
    outs = {}
    for backend in ("flex", "sdpa"):
        attention.set_backend(backend)
        with torch.no_grad():
            outs[backend] = model.decoder(*x)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH), torch.no_grad():
        attention.set_backend("sdpa")
        ref = model.decoder(*x)
    attention.set_backend("auto")
    assert (outs["flex"] - ref).abs().max() <= 2e-3
    assert (outs["sdpa"] - ref).abs().max() <= 2e-3
