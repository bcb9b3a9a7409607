"""The one request type: notation normalised once, every bad value reported together, JSON round trip,
the seed policy, the per-family defaults."""

from __future__ import annotations

import pytest
import torch

from songstep.config import tiny_config
from songstep.errors import InvalidRequest
from songstep.pipeline.plan import resolve
from songstep.request import MAX_SEED, GenerationRequest, next_seed, take_seeds


@pytest.mark.parametrize("spelling,canonical", [
    ("Am", "A minor"), ("A min", "A minor"), ("a minor", "A minor"), ("C Major", "C major"), ("c major", "C major"),
    ("F#m", "F# minor"), ("f# min", "F# minor"), ("Gb", "Gb major"), ("Bb maj", "Bb major"), ("C", "C major"),
    ("E flat minor", "Eb minor"), ("CM", "C major"),
])
def test_keys_in_any_common_spelling(spelling, canonical) -> None:
    assert GenerationRequest(keyscale=spelling).keyscale == canonical


@pytest.mark.parametrize("given,canonical", [("6/8", "6"), ("3/4", "3"), ("4/4", "4"), (4, "4"), ("2", "2")])
def test_time_signatures(given, canonical) -> None:
    assert GenerationRequest(timesignature=given).timesignature == canonical


@pytest.mark.parametrize("given,canonical", [("EN", "en"), ("Zh", "zh"), ("en-US", "en"), ("ja", "ja")])
def test_language_codes_any_case(given, canonical) -> None:
    assert GenerationRequest(language=given).language == canonical


def test_every_bad_value_reported_together_one_line_each() -> None:
    with pytest.raises(InvalidRequest) as info:
        GenerationRequest(duration=5, bpm=999, keyscale="H#", timesignature="7/8", colour="red")
    lines = str(info.value).splitlines()
    assert len(lines) == 5
    assert "duration must be between 10 and 600 seconds, got 5" in lines
    assert "bpm must be between 30 and 300, got 999" in lines
    assert any(line.startswith("keyscale: unknown key 'H#'") for line in lines)
    assert any(line.startswith("timesignature:") for line in lines)
    assert "unknown field 'colour'" in lines


def test_types_are_checked_not_pasted() -> None:
    assert GenerationRequest(bpm="120").bpm == 120  # numeric strings from forms become numbers
    for bad in (dict(steps=8.5), dict(lyrics=["a"]), dict(duration="twelve"), dict(task="cover", source_audio=7)):
        with pytest.raises(InvalidRequest):
            GenerationRequest(**bad)


def test_seeds_minus_one_is_random_and_range_is_checked() -> None:
    assert GenerationRequest(seed=-1).seed is None
    with pytest.raises(InvalidRequest, match="seed must be between -1 and"):
        GenerationRequest(seed=2**70)
    with pytest.raises(InvalidRequest, match="passes the largest seed"):
        GenerationRequest(seed=MAX_SEED, batch=2)
    assert take_seeds(5, 3) == [5, 6, 7]
    random_run = take_seeds(None, 3)
    assert random_run[1] == random_run[0] + 1 and random_run[2] == random_run[0] + 2
    assert next_seed(MAX_SEED) == 0 and next_seed(4) == 5


def test_json_round_trip_keeps_values_and_what_was_set() -> None:
    request = GenerationRequest(caption="x", duration=30, keyscale="Am", tracks=(), seed=3, cfg_interval=(0.1, 0.9))
    again = GenerationRequest.from_json(request.to_json())
    assert again == request
    assert request.defaulted() == again.defaulted()
    with pytest.raises(InvalidRequest, match="in-memory tensor"):
        GenerationRequest.from_json(GenerationRequest(task="cover", source_audio=torch.zeros(2, 10)).to_json())


def test_replace_revalidates() -> None:
    request = GenerationRequest(duration=30)
    assert request.replace(keyscale="Am").keyscale == "A minor"
    with pytest.raises(InvalidRequest):
        request.replace(duration=1)


def test_diffusers_names_are_accepted() -> None:
    request = GenerationRequest(num_inference_steps=12, guidance_scale=5.0)
    assert (request.steps, request.guidance) == (12, 5.0)


def test_family_defaults_from_the_checkpoint_config() -> None:
    turbo, base = tiny_config(is_turbo=True), tiny_config(is_turbo=False)
    t = resolve(GenerationRequest(duration=30), turbo)
    b = resolve(GenerationRequest(duration=30), base)
    assert (t.sampler.steps, t.sampler.dcw.enabled, t.sampler.guidance_scale) == (8, True, 1.0)
    assert (b.sampler.steps, b.sampler.dcw.enabled, b.sampler.guidance_scale) == (32, False, 7.0)
    assert {"steps", "shift", "dcw", "solver"} <= set(b.defaults)
    user = resolve(GenerationRequest(duration=30, dcw=True, steps=50), base)  # a user value always wins
    assert (user.sampler.steps, user.sampler.dcw.enabled) == (50, True)
    assert "steps" not in user.defaults and "dcw" not in user.defaults
    assert resolve(GenerationRequest(duration=30), turbo, "turbo-shift1").sampler.shift == 1.0


def test_ignored_values_are_warned(caplog) -> None:
    turbo = tiny_config(is_turbo=True)
    plan = resolve(GenerationRequest(duration=30, guidance=7, instrumental=True, lyrics="la la"), turbo)
    assert any("guidance 7 is ignored" in w for w in plan.warnings)
    assert any("lyrics are ignored" in w for w in plan.warnings)
    assert plan.texts.lyrics == "[Instrumental]"


def test_level_rule_per_task() -> None:
    base = tiny_config(is_turbo=False)
    assert resolve(GenerationRequest(duration=30), base).level.peak
    for task in ("extract", "lego", "complete", "repaint"):
        plan = resolve(GenerationRequest(task=task, source_audio="x.wav", tracks=("vocals",)), base)
        assert not plan.level.peak, task
    assert resolve(GenerationRequest(task="extract", source_audio="x.wav", tracks=("vocals",), normalize=True), base).level.peak
