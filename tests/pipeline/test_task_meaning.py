"""Each task tested for what it means, not only for shapes, on the tiny tree (CPU).

Random weights cannot show musical meaning, so each test checks the property that defines the task:
repaint keeps the source's latents outside its window (exactly, beyond the crossfade); add-layer,
extract and complete are conditioned on the source (another source gives other audio, the same one
the same audio), on their track instruction (another track gives other audio), keep the source's
length and level, and record the task the user ran.
"""

from __future__ import annotations

import pytest
import torch

from songstep.constants import HOP_LENGTH, SAMPLE_RATE
from songstep.pipeline import Pipeline
from songstep.pipeline.inputs import generators, load_wave


@pytest.fixture(scope="module")
def base(tiny_tree):
    return Pipeline.from_pretrained(tiny_tree, variant="base", device="cpu", lm="none")


@pytest.fixture(scope="module")
def turbo(tiny_tree):
    return Pipeline.from_pretrained(tiny_tree, variant="turbo", device="cpu", lm="none")


@pytest.fixture(scope="module")
def other_wav(tmp_path_factory):
    import numpy as np
    import soundfile as sf

    t = np.arange(4 * SAMPLE_RATE) / SAMPLE_RATE
    wave = 0.4 * np.sign(np.sin(2 * np.pi * 110 * t))
    path = tmp_path_factory.mktemp("other") / "other.wav"
    sf.write(path, np.stack([wave, wave], 1), SAMPLE_RATE)
    return path


def test_repaint_keeps_source_latents_outside_the_window(turbo, source_wav) -> None:
    r = turbo.repaint(source_wav, 1.6, 2.4, "guitar solo", seed=3, repaint_strength=0.0)
    wave = load_wave(source_wav)
    with torch.no_grad():
        src = turbo.components.vae.encode(wave[None], generators([3], "cpu"))[0]
    frames = r.params["frames"]
    assert frames == wave.shape[1] // HOP_LENGTH
    lo, hi = 40 - 25, 60 + 25  # window frames 40–60, 25 crossfade frames each side at strength 0
    got = r.latents[0].float()
    torch.testing.assert_close(got[:lo], src[:lo].float(), atol=0, rtol=0)
    torch.testing.assert_close(got[hi:frames], src[hi:frames].float(), atol=0, rtol=0)
    assert not torch.equal(got[40:60], src[40:60].float())  # the window was regenerated


@pytest.mark.parametrize("method,args,other_args,instruction", [
    ("extract", ("vocals",), ("drums",), "Extract the VOCALS track from the audio:"),
    ("add_layer", ("guitar",), ("keyboard",), "Generate the GUITAR track based on the audio context:"),
    ("complete", (["drums", "bass"],), (["keyboard"],), "Complete the input track with DRUMS | BASS:"),
])
def test_source_tasks_follow_source_and_track(base, source_wav, other_wav, method, args, other_args, instruction) -> None:
    run = getattr(base, method)
    a = run(source_wav, *args, seed=4, steps=3)
    again = run(source_wav, *args, seed=4, steps=3)
    other_source = run(other_wav, *args, seed=4, steps=3)
    other_track = run(source_wav, *other_args, seed=4, steps=3)
    assert torch.equal(a.audio, again.audio)
    assert not torch.equal(a.audio, other_source.audio)  # conditioned on the source
    assert not torch.equal(a.audio, other_track.audio)  # conditioned on the track instruction
    assert a.params["instruction"] == instruction
    assert a.audio.shape[-1] == (4 * SAMPLE_RATE // HOP_LENGTH) * HOP_LENGTH  # the source's length
    assert a.params["level"] == "as decoded"  # stems, layers and completions keep the source's level
    assert a.params["task"] == a.params["runs_as"] == {"add_layer": "lego"}.get(method, method)


def test_a_request_stands_alone_after_a_cover_with_noise_and_codes(tiny_tree, turbo, source_wav) -> None:
    codes = "".join(f"<|audio_code_{i * 37 % 64000}|>" for i in range(60))
    turbo.cover(source_wav, "jazz", strength=0.6, cover_noise_strength=0.4, audio_codes=codes, seed=2, steps=4)
    after = turbo.generate("lofi", duration=10, seed=9)
    fresh = Pipeline.from_pretrained(tiny_tree, variant="turbo", device="cpu", lm="none").generate("lofi", duration=10, seed=9)
    assert torch.equal(after.audio, fresh.audio)
    assert after.params["request"] == fresh.params["request"]
