"""Bucketed DiT lengths: padding is invisible to the real frames, and a compiled decoder compiles
once per bucket (not per song length or lyric length), through the pipeline and the CLI."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from songstep.models.dit_compile import (
    BucketedDecoder,
    bucket_length,
    compile_decoder,
    parse_compile,
    uncompile_decoder,
)
from songstep.testing.tiny import tiny_dit


def _inputs(cfg, frames: int, enc_len: int = 7, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, frames, cfg.audio_acoustic_hidden_dim, generator=g)
    ctx = torch.randn(batch, frames, cfg.in_channels - cfg.audio_acoustic_hidden_dim, generator=g)
    enc = torch.randn(batch, enc_len, cfg.enc_hidden, generator=g)
    t = torch.tensor([0.9, 0.3])[:batch]
    return x, t, ctx, enc


def test_bucket_length() -> None:
    assert bucket_length(1, 750, 2) == 750
    assert bucket_length(750, 750, 2) == 750
    assert bucket_length(751, 750, 2) == 1500
    assert bucket_length(19, 31, 2) == 32  # the bucket itself is a whole number of patches
    assert bucket_length(33, 31, 2) == 64


@pytest.mark.parametrize("frames", [19, 20, 31, 32])  # odd: a zero frame inside the last real patch
def test_padding_leaves_real_frames_alone(frames: int) -> None:
    """Every sliding layer's band (window 4 patches) and every full layer sees only real patches:
    the bucketed forward equals the unpadded one up to fp32 summation order."""
    model = tiny_dit(seed=3)
    x, t, ctx, enc = _inputs(model.config, frames)
    with torch.no_grad():
        kv = model.decoder.cross_kv(enc)
        ref = model.decoder(x, t, t, context_latents=ctx, cross_kv=kv)
        out = BucketedDecoder(model.decoder, backend=None, bucket_frames=48)(x, t, t, ctx, kv)
    assert out.shape == ref.shape == x.shape
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)


def test_padded_patches_are_masked_not_zeroed() -> None:
    """Garbage in the padded frames changes nothing on the real ones (the key mask, not the zero
    padding, is what hides them); without the mask the same garbage does change them."""
    model = tiny_dit(seed=4)
    frames, padded = 20, 48
    x, t, ctx, enc = _inputs(model.config, padded, seed=1)
    kv = model.decoder.cross_kv(enc)
    mask = BucketedDecoder(model.decoder, None, padded).token_mask(frames, padded, x.device)
    noisy_x, noisy_ctx = x.clone(), ctx.clone()
    noisy_x[:, frames:] *= 50
    noisy_ctx[:, frames:] *= 50
    with torch.no_grad():
        clean = model.decoder.body(x, t, t, ctx, kv, mask)[:, :frames]
        noisy = model.decoder.body(noisy_x, t, t, noisy_ctx, kv, mask)[:, :frames]
        unmasked = model.decoder.body(noisy_x, t, t, noisy_ctx, kv)[:, :frames]
    torch.testing.assert_close(noisy, clean, atol=1e-5, rtol=1e-5)
    assert (unmasked - clean).abs().max() > 1e-2


def test_parse_compile() -> None:
    assert parse_compile(True) == ("inductor", None)
    assert parse_compile("default") == ("inductor", None)
    assert parse_compile("reduce-overhead") == ("inductor", "reduce-overhead")
    assert parse_compile("aot_eager") == ("aot_eager", None)


def _compiles() -> int:
    return counters["frames"]["ok"]


def test_compiled_decoder_compiles_once_per_bucket() -> None:
    model = tiny_dit(seed=5)
    torch._dynamo.reset()
    counters.clear()
    compile_decoder(model.decoder, backend="aot_eager", bucket_frames=32)
    with torch.no_grad():
        for frames, enc_len in ((19, 7), (24, 9), (32, 12)):  # one bucket, three lengths, three lyric lengths
            x, t, ctx, enc = _inputs(model.config, frames, enc_len)
            out = model.decoder(x, t, t, enc, ctx)
            assert out.shape == x.shape
        assert _compiles() == 1
        x, t, ctx, enc = _inputs(model.config, 40)
        compiled = model.decoder(x, t, t, enc, ctx)
        assert _compiles() == 2
        uncompile_decoder(model.decoder)
        eager = model.decoder(x, t, t, enc, ctx)
    torch.testing.assert_close(compiled, eager, atol=2e-5, rtol=1e-5)


def test_pipeline_compiles_once_per_bucket(tiny_tree) -> None:
    """Three song lengths in the first 30 s bucket, then one in the second: two compiles, and the
    latents match the uncompiled pipeline's."""
    from songstep.pipeline import Pipeline

    torch._dynamo.reset()
    counters.clear()
    pipe = Pipeline.from_pretrained(tiny_tree, variant="turbo", device="cpu", lm="none", compile="aot_eager")
    results = {}
    for seconds, compiles in ((10.0, 1), (14.0, 1), (22.5, 1), (40.0, 2)):
        results[seconds] = pipe.generate("bright synth pop", "[verse]\nla la", duration=seconds, seed=7, steps=2)
        assert _compiles() == compiles, (seconds, dict(counters["frames"]))
    plain = Pipeline.from_pretrained(tiny_tree, variant="turbo", device="cpu", lm="none")
    ref = plain.generate("bright synth pop", "[verse]\nla la", duration=10.0, seed=7, steps=2)
    torch.testing.assert_close(results[10.0].latents, ref.latents, atol=1e-4, rtol=1e-4)


def test_cli_generate_compile_flag(tiny_tree, tmp_path) -> None:
    from songstep.cli import main

    torch._dynamo.reset()
    counters.clear()
    code = main(["generate", "--model", str(tiny_tree), "--duration", "10", "--steps", "2", "--quiet",
                 "--compile", "aot_eager", "--output-dir", str(tmp_path), "--name", "song"])
    assert code == 0
    assert (tmp_path / "song.wav").is_file()
    assert _compiles() == 1
