"""The Python API end to end on a tiny random checkpoint tree (CPU)."""

from __future__ import annotations

import pytest
import torch

from songstep.audio import load_audio
from songstep.constants import HOP_LENGTH, SAMPLE_RATE
from songstep.errors import InvalidRequest
from songstep.pipeline import Pipeline


@pytest.fixture(scope="module")
def turbo(tiny_tree):
    return Pipeline.from_pretrained(tiny_tree, variant="turbo", device="cpu")


@pytest.fixture(scope="module")
def base(tiny_tree):
    return Pipeline.from_pretrained(tiny_tree, variant="base", device="cpu")


def test_generate_shapes_seeds_and_params(turbo) -> None:
    r = turbo.generate("lofi hip hop", "[Instrumental]", duration=12.34, seed=5, batch=2)
    frames = int(12.3 * SAMPLE_RATE) // HOP_LENGTH
    assert r.audio.shape == (2, 2, frames * HOP_LENGTH) and r.sample_rate == 48000
    assert r.seeds == [5, 6]
    assert r.params["frames"] == frames and r.params["model"] == "turbo"
    assert r.params["sampler"]["steps"] == 8 and r.params["sampler"]["shift"] == 3.0
    assert {"prepare", "text", "dit", "vae", "total"} <= set(r.timings)
    peaks = r.audio.abs().amax(dim=(1, 2))
    torch.testing.assert_close(peaks, torch.full((2,), 10 ** (-1 / 20)), atol=1e-4, rtol=0)


def test_same_seed_same_audio_and_items_reproducible_alone(turbo) -> None:
    a = turbo.generate("lofi", duration=10, seed=11, batch=2)
    b = turbo.generate("lofi", duration=10, seed=11, batch=2)
    c = turbo.generate("lofi", duration=10, seed=12)
    d = turbo.generate("lofi", duration=10, seed=13)
    assert torch.equal(a.audio, b.audio)
    torch.testing.assert_close(a.audio[1], c.audio[0], atol=1e-4, rtol=0)  # item 1 of seed 11 = seed 12 alone
    assert (c.audio - d.audio).abs().max() > 1e-3


def test_generator_argument(turbo) -> None:
    g1 = torch.Generator().manual_seed(42)
    g2 = torch.Generator().manual_seed(42)
    a = turbo.generate("lofi", duration=10, generator=g1)
    b = turbo.generate("lofi", duration=10, seed=42)
    assert a.seeds == [42]
    assert torch.equal(a.audio, b.audio)
    with pytest.raises(InvalidRequest, match="2 generators for a batch of 1"):
        turbo.generate("lofi", duration=10, generator=[g1, g2])


def test_progress_callback(turbo) -> None:
    seen = []
    turbo.generate("lofi", duration=10, seed=1, steps=4, progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert [s for s in seen if s[0] == "dit"] == [("dit", i, 4) for i in range(1, 5)]
    vae = [(done, total) for stage, done, total in seen if stage == "vae"]  # per decoder block of each tile
    assert vae[0][0] == 0 and vae[-1][0] == vae[-1][1] and [d for d, _ in vae] == list(range(vae[-1][1] + 1))


def test_cover_reference_and_strength(turbo, source_wav) -> None:
    r1 = turbo.cover(source_wav, "jazz", strength=0.5, seed=3, reference_audio=source_wav)
    r2 = turbo.cover(source_wav, "jazz", strength=0.5, seed=3, reference_audio=source_wav)
    assert torch.equal(r1.audio, r2.audio)
    assert r1.audio.shape[-1] == (4 * SAMPLE_RATE // HOP_LENGTH) * HOP_LENGTH
    assert r1.params["instruction"].startswith("Generate audio semantic tokens")


def test_repaint_extension_keeps_the_source_outside_the_window(turbo, source_wav) -> None:
    src = load_audio(source_wav)
    r = turbo.repaint(source_wav, start=-1.0, end=2.0, caption="piano", seed=1)
    frames = (src.shape[1] + 1 * SAMPLE_RATE) // HOP_LENGTH
    assert r.audio.shape[-1] == frames * HOP_LENGTH  # longer by the 1 s extension, to the frame
    out = r.audio[0]
    crossfade = int(round(0.05 * 0.5 * SAMPLE_RATE))
    start_kept = (3 * SAMPLE_RATE // HOP_LENGTH) * HOP_LENGTH + crossfade  # window end: 2 s + 1 s pad
    kept_out = out[:, start_kept:]
    kept_src = src[:, start_kept - SAMPLE_RATE : start_kept - SAMPLE_RATE + kept_out.shape[1]]
    torch.testing.assert_close(kept_out, kept_src, atol=1e-6, rtol=0)
    assert (out[:, :SAMPLE_RATE]).abs().max() > 1e-4  # the extension was generated, not silence


def test_repaint_end_past_source_extends_right(turbo, source_wav) -> None:
    r = turbo.repaint(source_wav, start=2.0, end=6.0, seed=2)
    assert r.audio.shape[-1] == (6 * SAMPLE_RATE // HOP_LENGTH) * HOP_LENGTH


@pytest.mark.parametrize("method,kwargs", [
    ("add_layer", dict(track="guitar")),
    ("extract", dict(track="vocals")),
    ("complete", dict(tracks=["drums", "bass"])),
])
def test_base_only_tasks(base, turbo, source_wav, method, kwargs) -> None:
    r = getattr(base, method)(source_wav, seed=4, steps=3, **kwargs)
    assert r.audio.shape == (1, 2, (4 * SAMPLE_RATE // HOP_LENGTH) * HOP_LENGTH)
    assert torch.isfinite(r.audio).all()
    with pytest.raises(InvalidRequest, match="needs a base or sft model"):
        getattr(turbo, method)(source_wav, seed=4, **kwargs)


def test_bad_inputs_raise_before_work(turbo, tmp_path) -> None:
    with pytest.raises(InvalidRequest, match="duration is required"):
        turbo.generate("no length")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    from songstep.errors import InvalidAudio

    with pytest.raises(InvalidAudio):
        turbo.cover(bad, "x", seed=1)


def test_output_level_peak_off_and_loudness(turbo) -> None:
    pyloudnorm = pytest.importorskip("pyloudnorm")
    raw = turbo.generate("lofi", duration=10, seed=3, normalize=False)
    peak = turbo.generate("lofi", duration=10, seed=3)
    loud = turbo.generate("lofi", duration=10, seed=3, loudness=-23.0)
    assert raw.params["level"] == "as decoded" and peak.params["level"] == "-1 dBFS peak"
    assert loud.params["level"] == "-23 LUFS"
    # the three differ only by one gain per take
    gain = peak.audio.abs().max() / raw.audio.abs().max()
    torch.testing.assert_close(peak.audio, raw.audio * gain, atol=1e-5, rtol=0)
    meter = pyloudnorm.Meter(SAMPLE_RATE)
    measured = meter.integrated_loudness(loud.audio[0].T.double().numpy())
    assert loud.audio.abs().max() < 1.0  # quiet target: no peak limiting
    assert measured == pytest.approx(-23.0, abs=0.05)
    for bad in (5.0, -90.0):
        with pytest.raises(InvalidRequest, match="between -70 and 0 LUFS"):
            turbo.generate("lofi", duration=10, seed=3, loudness=bad)


def test_out_of_memory_frees_retries_once_then_explains(turbo, monkeypatch) -> None:
    """A GPU OOM in the DiT/VAE: free what can be freed, retry once with the generators'
    states restored (same audio), else `OutOfMemory` saying what to change."""
    from songstep.errors import OutOfMemory
    from songstep.pipeline.memory import OOM_ERRORS

    want = turbo.generate("lofi", duration=10, seed=21)
    real = type(turbo)._sample
    failures = []

    def flaky(self, *args, **kwargs):
        out = real(self, *args, **kwargs)  # the noise has been drawn: the retry must redraw it
        if len(failures) < budget[0]:
            failures.append(1)
            raise OOM_ERRORS[0]("CUDA out of memory")
        return out

    monkeypatch.setattr(type(turbo), "_sample", flaky)
    budget = [1]
    assert torch.equal(turbo.generate("lofi", duration=10, seed=21).audio, want.audio)
    failures.clear()
    own = turbo.generate("lofi", duration=10, generator=torch.Generator().manual_seed(21))
    assert torch.equal(own.audio, want.audio) and failures == [1]
    failures.clear()
    budget = [2]
    with pytest.raises(OutOfMemory, match="lower the batch or the duration"):
        turbo.generate("lofi", duration=10, seed=21)
    assert failures == [1, 1]


@pytest.mark.parametrize("failures, label", [(1, "per take"), (2, "per take, 256-frame tiles"), (3, "cpu")])
def test_vae_decode_degrades_instead_of_failing(turbo, monkeypatch, failures, label) -> None:
    """Out of GPU memory in the VAE: the whole batch, then per take, then per take with smaller
    tiles, then the CPU; the audio is the same and the params say which fallback ran."""
    from songstep.pipeline.memory import OOM_ERRORS

    want = turbo.generate("lofi", duration=10, seed=4, batch=2)
    vae = turbo.components.vae
    real = vae.decode
    calls = []

    def flaky(latents, **kwargs):
        calls.append((latents.shape[0], kwargs.get("chunk_frames")))
        if len(calls) <= failures:
            raise OOM_ERRORS[0]("CUDA out of memory")
        return real(latents, **kwargs)

    monkeypatch.setattr(vae, "decode", flaky)
    got = turbo.generate("lofi", duration=10, seed=4, batch=2)
    torch.testing.assert_close(got.audio, want.audio, atol=1e-5, rtol=0)
    assert got.params["vae_decode"] == label and "vae_decode" not in want.params
    assert calls[0] == (2, None) and ((1, 256) in calls) == (failures >= 2)


def test_checkpoint_distilled_at_one_shift_defaults_to_it(turbo) -> None:
    from songstep.pipeline.plan import resolve
    from songstep.request import GenerationRequest

    def sampler_options(request, cfg, variant):
        return resolve(request, cfg, variant).sampler

    cfg = turbo.components.dit.config
    request = GenerationRequest(caption="x", duration=10)
    assert sampler_options(request, cfg, "turbo").shift == 3.0
    assert sampler_options(request, cfg, "turbo-shift1").shift == 1.0
    assert sampler_options(request, cfg, "turbo-shift3").shift == 3.0
    assert sampler_options(request.replace(shift=2.0), cfg, "turbo-shift1").shift == 2.0  # the user wins
    assert turbo.generate("lofi", duration=10, seed=1).params["sampler"]["shift"] == 3.0
