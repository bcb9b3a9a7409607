"""Upstream's request spellings → songstep's request fields (pure, no server)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

from songstep.config import GenerationRequest  # noqa: E402
from songstep.server.schemas import ReleaseTaskParams, to_request  # noqa: E402


def fields(body: dict) -> dict:
    return ReleaseTaskParams.model_validate(body).generation_fields()


def test_upstream_defaults_differ_from_the_cli() -> None:
    p = ReleaseTaskParams.model_validate({})
    assert (p.thinking, p.vocal_language, p.shift, p.batch_size, p.audio_format, p.lm_cfg_scale) == (
        False, "en", 3.0, 2, "mp3", 2.5)
    f = p.generation_fields()
    assert f["language"] == "en" and f["batch"] == 2 and f["shift"] == 3.0 and f["seed"] is None


@pytest.mark.parametrize("body", [
    {"prompt": "rock", "audio_duration": 30, "key_scale": "C major", "time_signature": "4", "inference_steps": 4},
    {"caption": "rock", "duration": 30, "keyscale": "C major", "timesignature": "4", "inferenceSteps": 4},
    {"prompt": "rock", "audioDuration": "30", "keyScale": "C major", "timeSignature": "4", "inferenceSteps": "4"},
    {"prompt": "rock", "metas": {"duration": 30, "keyscale": "C major", "timesignature": "4"}, "inference_steps": 4},
    {"prompt": "rock", "metas": '{"audio_duration": 30, "key_scale": "C major", "time_signature": "4"}',
     "inference_steps": 4},
    {"prompt": "rock", "user_metadata": {"duration": 30, "key": "C major", "time_signature": "4"}, "inference_steps": 4},
])
def test_every_spelling_gives_the_same_fields(body) -> None:
    f = fields(body)
    assert (f["caption"], f["duration"], f["keyscale"], f["timesignature"], f["steps"]) == ("rock", 30.0, "C major",
                                                                                           "4", 4)


def test_top_level_wins_over_metas_and_blank_form_values_are_unset() -> None:
    f = fields({"bpm": "120", "metas": {"bpm": 90, "duration": 20}, "audio_duration": "", "key_scale": ""})
    assert f["bpm"] == 120 and f["duration"] == 20 and f["keyscale"] is None


def test_seed_rules_and_tasks() -> None:
    assert fields({"seed": 42})["seed"] is None  # use_random_seed defaults to true: the seed is ignored, as upstream
    assert fields({"seed": 42, "use_random_seed": False})["seed"] == 42
    assert fields({"seed": "7,8", "useRandomSeed": "false"})["seed"] == 7
    assert fields({"seed": -1, "use_random_seed": False})["seed"] is None
    f = fields({"task_type": "lego", "track_name": "drums", "repainting_end": -1, "use_adg": True,
                "timesteps": "0.9,0.5,0", "audio_code_string": ["<|audio_code_1|>", "<|audio_code_2|>"]})
    assert f["tracks"] == ["drums"] and f["repaint_end"] is None and f["guidance_method"] == "adg"
    assert f["timesteps"] == [0.9, 0.5, 0.0] and f["audio_codes"] == "<|audio_code_1|><|audio_code_2|>"
    assert fields({"track_classes": "vocals, drums"})["tracks"] == ["vocals", "drums"]


def test_to_request_builds_the_request_type() -> None:
    f = fields({"prompt": "jazz", "bpm": 100, "batch_size": 1, "cfg_interval_start": 0.1, "track_classes": ["bass"]})
    req = to_request(f)
    assert isinstance(req, GenerationRequest)
    assert req.caption == "jazz" and req.bpm == 100 and req.batch == 1
    assert req.cfg_interval == (0.1, 1.0) and req.tracks == ("bass",)


@pytest.mark.parametrize("body", [{"bpm": 10}, {"batch_size": 9}, {"infer_method": "magic"}, {"audio_format": "exe"},
                                  {"metas": "{not json"}, {"seed": "abc", "use_random_seed": False}])
def test_bad_values_are_rejected(body) -> None:
    with pytest.raises(ValueError):
        fields(body)


@pytest.mark.parametrize("given,key", [("C Major", "C major"), ("Am", "A minor"), ("f# min", "F# minor"),
                                       ("Bb", "Bb major"), ("E minor", "E minor"), ("", None)])
def test_upstream_key_spellings(given, key) -> None:
    assert fields({"key_scale": given})["keyscale"] == key


@pytest.mark.parametrize("given,ts", [("4", "4"), ("4/4", "4"), ("6/8", "6"), ("3/4", "3"), (3, "3")])
def test_upstream_time_signatures(given, ts) -> None:
    assert fields({"time_signature": given})["timesignature"] == ts
