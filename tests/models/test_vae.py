"""songstep.models.vae: tiling plan, tiled == untiled within tolerance, shapes, determinism,
loading and the silence latent.

Tolerance argument. The Oobleck receptive field depends only on the strides, kernels and
dilations, not on the widths: with the official ratios [2,4,4,6,10] a single input sample
reaches about +-7 latent frames through the encoder and a single latent frame about +-8 frames of
audio through the decoder (measured below by `test_receptive_field_is_below_the_overlap`). Window
and core boundaries are whole latent frames, so when the overlap exceeds the receptive field every
kept output sees exactly the inputs it sees in an untiled pass and only float rounding differs.
Measured on the narrow tiny Oobleck below (fp32, CPU): encode mean 0 to 2.4e-7 abs, posterior
sample 1.2e-7, decode 5.2e-7 (peak |audio| 0.32); asserted with TOL = 1e-5. With an overlap of 2
frames the differences are 3e-2: the control assertions check the tests are sensitive to tiling.
The tiling tests use 4 latent channels (encoder width 8) for speed; the tiling code does not
depend on the width, and the 64-channel files from `write_tiny_vae` are covered separately.
"""

from __future__ import annotations

import json

import pytest
import torch

from songstep.constants import HOP_LENGTH, LATENT_CHANNELS, SAMPLE_RATE
from songstep.errors import CheckpointError, InvalidAudio, InvalidRequest, ModelNotFound
from songstep.models.vae import (
    VAE,
    default_decode_tiling,
    default_encode_chunk_seconds,
    load_silence_latent,
    plan_tiles,
    silence_prefix,
)
from songstep.testing.tiny_components import tiny_oobleck, write_silence_latent, write_tiny_vae

TOL = 1e-5
HOP = HOP_LENGTH
# Test tiling: 10-frame overlap (> receptive field), 30-frame chunks (stride 10) both ways.
ENC = dict(chunk_seconds=1.2, overlap_seconds=0.4)
DEC = dict(chunk_frames=30, overlap_frames=10)
WHOLE_ENC = dict(chunk_seconds=1000.0)
WHOLE_DEC = dict(chunk_frames=10**6)


@pytest.fixture(scope="module")
def narrow() -> VAE:
    return VAE(tiny_oobleck(3, latent_channels=4))


@pytest.fixture(scope="module")
def wave() -> torch.Tensor:
    gen = torch.Generator().manual_seed(11)
    return torch.randn((2, 2, HOP * 26 + 777), generator=gen) * 0.3  # 1.05 s, odd length: 3 tiles


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory):
    return write_tiny_vae(tmp_path_factory.mktemp("ckpt") / "vae", seed=5)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- tiling plan ------------------------------------------------------------------------------
def test_plan_whole_when_not_longer_than_chunk():
    assert [(t.win_start, t.win_end, t.core_start, t.core_end) for t in plan_tiles(512, 512, 64)] == [
        (0, 512, 0, 512)
    ]


@pytest.mark.parametrize("length,chunk,overlap", [(513, 512, 64), (15000, 512, 64), (1000, 30, 10)])
def test_plan_cores_partition_and_windows_add_overlap(length, chunk, overlap):
    tiles = plan_tiles(length, chunk, overlap)
    assert tiles[0].core_start == 0 and tiles[-1].core_end == length
    for a, b in zip(tiles, tiles[1:]):
        assert a.core_end == b.core_start
    for t in tiles:
        assert t.win_start == max(0, t.core_start - overlap)
        assert t.win_end == min(length, t.core_end + overlap)
        assert t.win_end - t.win_start <= chunk


def test_plan_upstream_encode_numbers_are_frame_aligned():
    """600 s at 30 s / 2 s: stride 26 s, 24 tiles, every boundary on a whole latent frame."""
    samples = 600 * SAMPLE_RATE
    tiles = plan_tiles(samples, 30 * SAMPLE_RATE, 2 * SAMPLE_RATE)
    assert len(tiles) == 24
    assert tiles[1].core_start == 26 * SAMPLE_RATE
    for t in tiles:
        assert all(v % HOP == 0 for v in (t.win_start, t.win_end, t.core_start, t.core_end))


def test_plan_rejects_chunk_not_above_twice_overlap():
    with pytest.raises(InvalidRequest):
        plan_tiles(1000, 128, 64)


def test_device_defaults():
    assert default_encode_chunk_seconds("cpu") == 30.0
    assert default_decode_tiling("cpu") == (512, 64)
    assert default_decode_tiling("mps") == (32, 8)


# -- tiled vs untiled ---------------------------------------------------------------------------
def test_receptive_field_is_below_the_overlap(narrow):
    """One perturbed sample / frame changes only nearby frames / samples (< 10 frames away)."""
    x = torch.zeros((1, 2, HOP * 48))
    bumped = x.clone()
    bumped[..., HOP * 24] = 1.0
    changed = (narrow.encode(bumped, sample=False) - narrow.encode(x, sample=False)).abs().amax(dim=(0, 2))
    frames = changed.nonzero().flatten()
    assert frames.min() >= 24 - 9 and frames.max() <= 24 + 9
    z = torch.zeros((1, 60, 4))
    zb = z.clone()
    zb[:, 30] = 1.0
    diff = (narrow.decode(zb) - narrow.decode(z)).abs().amax(dim=(0, 1))
    samples = diff.nonzero().flatten()
    assert samples.min() >= (30 - 9) * HOP and samples.max() < (31 + 9) * HOP


def test_tiled_encode_mean_matches_untiled(narrow, wave):
    whole = narrow.encode(wave, sample=False, **WHOLE_ENC)
    tiled = narrow.encode(wave, sample=False, **ENC)
    assert tiled.shape == whole.shape == (2, 26, 4)
    assert (tiled - whole).abs().max().item() <= TOL
    coarse = narrow.encode(wave, sample=False, chunk_seconds=0.56, overlap_seconds=0.08)
    assert (coarse - whole).abs().max().item() > 1e-3  # control: a 2-frame overlap is visible


def test_tiled_encode_sample_matches_untiled_with_same_generator(narrow, wave):
    whole = narrow.encode(wave, _gen(7), **WHOLE_ENC)
    tiled = narrow.encode(wave, _gen(7), **ENC)
    assert (tiled - whole).abs().max().item() <= TOL
    mean = narrow.encode(wave, sample=False, **WHOLE_ENC)
    assert (whole - mean).abs().max().item() > 1e-3  # it really sampled


def test_untiled_fp32_sample_equals_diffusers_latent_dist_sample(narrow, wave):
    ours = narrow.encode(wave, _gen(3), **WHOLE_ENC)
    with torch.no_grad():
        ref = narrow.model.encode(wave).latent_dist.sample(generator=_gen(3))
    assert torch.equal(ours, ref.transpose(1, 2))


def test_tiled_decode_matches_untiled(narrow):
    z = torch.randn((2, 47, 4), generator=_gen(2))
    whole = narrow.decode(z, **WHOLE_DEC)
    tiled = narrow.decode(z, **DEC)
    assert tiled.shape == whole.shape == (2, 2, 47 * HOP)
    assert (tiled - whole).abs().max().item() <= TOL
    coarse = narrow.decode(z, chunk_frames=24, overlap_frames=2)
    assert (coarse - whole).abs().max().item() > 1e-3  # control


# -- shapes, determinism, dtype -------------------------------------------------------------------
@pytest.mark.parametrize("samples", [HOP, HOP + 1, HOP * 31 - 1, HOP * 41 + 1919])
def test_encode_shapes_for_odd_lengths(narrow, samples):
    x = torch.randn((1, 2, samples), generator=_gen(0)) * 0.1
    for kw in (WHOLE_ENC, dict(chunk_seconds=1.2, overlap_seconds=0.4)):
        assert narrow.encode(x, _gen(1), **kw).shape == (1, samples // HOP, 4)


@pytest.mark.parametrize("frames", [1, 29, 30, 31, 51, 52])
def test_decode_shapes_for_odd_lengths(narrow, frames):
    z = torch.randn((1, frames, 4), generator=_gen(0))
    out = narrow.decode(z, **DEC)
    assert out.shape == (1, 2, frames * HOP) and out.dtype == torch.float32


def test_encode_is_deterministic_per_generator(narrow, wave):
    a = narrow.encode(wave, _gen(42), **ENC)
    b = narrow.encode(wave, _gen(42), **ENC)
    c = narrow.encode(wave, _gen(43), **ENC)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_per_item_generators_are_batch_invariant(narrow, wave):
    both = narrow.encode(wave, [_gen(1), _gen(2)], **ENC)
    second = narrow.encode(wave[1:], [_gen(2)], **ENC)
    assert (both[1:] - second).abs().max().item() <= TOL
    with pytest.raises(InvalidRequest):
        narrow.encode(wave, [_gen(1)])


def test_outputs_are_fp32_for_a_bf16_vae(wave):
    vae = VAE(tiny_oobleck(3, latent_channels=4).to(torch.bfloat16))
    latents = vae.encode(wave[:, :, : HOP * 12], _gen(0))
    assert latents.dtype == torch.float32 and latents.shape == (2, 12, 4)
    audio = vae.decode(latents)
    assert audio.dtype == torch.float32 and audio.shape == (2, 2, 12 * HOP)


def test_posterior_noise_is_float32_whatever_the_vae_dtype(wave):
    """Same seed, same noise values for a bf16 VAE: mean + std * N(0, 1) computed in fp32."""
    vae = VAE(tiny_oobleck(3, latent_channels=4).to(torch.bfloat16))
    x = wave[:, :, : HOP * 12]
    ours = vae.encode(x, _gen(5))
    with torch.no_grad():
        dist = vae.model.encode(x.to(torch.bfloat16)).latent_dist
    noise = torch.randn((2, 4, 12), generator=_gen(5))
    assert torch.equal(ours, (dist.mean.float() + dist.std.float() * noise).transpose(1, 2))


def test_decode_output_device_and_input_validation(narrow):
    z = torch.randn((1, 5, 4))
    assert narrow.decode(z, output_device="cpu").device.type == "cpu"
    with pytest.raises(InvalidRequest):
        narrow.decode(torch.randn((1, 5, 3)))
    with pytest.raises(InvalidRequest):
        narrow.decode(torch.randn((5, 4)))
    with pytest.raises(InvalidAudio):
        narrow.encode(torch.randn((1, 1, HOP * 4)))
    with pytest.raises(InvalidAudio):
        narrow.encode(torch.randn((1, 2, HOP - 1)))


# -- the official-layout tiny VAE ------------------------------------------------------------------
def test_from_pretrained_tiny_vae_round_trip(tiny_vae_dir):
    vae = VAE.from_pretrained(tiny_vae_dir, "cpu", torch.float32)
    assert (vae.hop_length, vae.latent_channels, vae.sample_rate) == (HOP, LATENT_CHANNELS, SAMPLE_RATE)
    x = torch.randn((1, 2, HOP * 6 + 5), generator=_gen(0)) * 0.1
    latents = vae.encode(x, _gen(0))
    assert latents.shape == (1, 6, LATENT_CHANNELS) and latents.dtype == torch.float32
    audio = vae.decode(latents)
    assert audio.shape == (1, 2, 6 * HOP) and torch.isfinite(audio).all()


def test_from_pretrained_errors(tmp_path, tiny_vae_dir):
    with pytest.raises(ModelNotFound):
        VAE.from_pretrained(tmp_path / "missing")
    bad = write_tiny_vae(tmp_path / "bad", seed=1)
    config = json.loads((bad / "config.json").read_text())
    config["sampling_rate"] = 44100
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="sampling_rate"):
        VAE.from_pretrained(bad)
    corrupt = write_tiny_vae(tmp_path / "corrupt", seed=1)
    (corrupt / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError):
        VAE.from_pretrained(corrupt)


# -- silence latent -----------------------------------------------------------------------------
def test_silence_latent_round_trip(tmp_path):
    path = write_silence_latent(tmp_path / "silence_latent.pt", seed=4, frames=300)
    raw = torch.load(path, weights_only=True)
    assert raw.shape == (1, LATENT_CHANNELS, 300) and raw.dtype == torch.float32
    silence = load_silence_latent(path)
    assert silence.shape == (1, 300, LATENT_CHANNELS) and silence.dtype == torch.float32
    assert torch.equal(silence, raw.transpose(1, 2))


@pytest.mark.parametrize(
    "value",
    [
        {"latent": torch.zeros(1, 64, 10)},
        torch.zeros(1, 64, 10, dtype=torch.int64),
        torch.zeros(1, 32, 10),
        torch.zeros(64, 10),
        torch.zeros(1, 64, 0),
    ],
    ids=["dict", "int", "channels", "2d", "empty"],
)
def test_silence_latent_rejects_wrong_content(tmp_path, value):
    path = tmp_path / "silence_latent.pt"
    torch.save(value, path)
    with pytest.raises(CheckpointError, match="silence_latent.pt"):
        load_silence_latent(path)


def test_silence_latent_rejects_unsafe_or_corrupt_files(tmp_path):
    unsafe = tmp_path / "unsafe.pt"
    torch.save(tmp_path, unsafe)  # a pathlib object: not allowed by weights_only
    with pytest.raises(CheckpointError, match="unsafe.pt"):
        load_silence_latent(unsafe)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_silence_latent(garbage)
    with pytest.raises(ModelNotFound):
        load_silence_latent(tmp_path / "missing.pt")


def test_silence_prefix_uses_leading_frames_and_tiles():
    silence = torch.arange(5, dtype=torch.float32).view(1, 5, 1).expand(1, 5, 2)
    assert silence_prefix(silence, 3)[0, :, 0].tolist() == [0, 1, 2]
    assert silence_prefix(silence, 12)[0, :, 0].tolist() == [0, 1, 2, 3, 4] * 2 + [0, 1]
