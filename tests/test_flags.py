"""Every CLI flag of every task command walks to its request field and back (no model is loaded)."""

from __future__ import annotations

import pytest

from songstep.cli import COMMANDS, build_parser, build_request
from songstep.flags import SKIP, fields_for, flag_name, request_to_argv
from songstep.request import GenerationRequest

# field → (text typed on the command line, the value the request holds)
SAMPLES = {
    "caption": ("warm tape hiss", "warm tape hiss"), "lyrics": ("[Verse]\nla", "[Verse]\nla"),
    "instrumental": (None, True), "language": ("EN", "en"), "duration": ("12.5", 12.5), "bpm": ("96", 96),
    "keyscale": ("F#m", "F# minor"), "timesignature": ("6/8", "6"), "tracks": ("drums", ("drums",)),
    "source_audio": ("a.wav", "a.wav"), "reference_audio": ("r.flac", "r.flac"), "repaint_start": ("-1.5", -1.5),
    "repaint_end": ("3.25", 3.25), "repaint_strength": ("0.3", 0.3), "strength": ("0.4", 0.4),
    "cover_noise_strength": ("0.2", 0.2), "audio_codes": ("<|audio_code_5|><|audio_code_9|>", "<|audio_code_5|><|audio_code_9|>"),
    "steps": ("4", 4), "shift": ("2.5", 2.5), "guidance": ("3", 3.0), "guidance_method": ("cfg", "cfg"),
    "cfg_interval": ("0.1,0.9", (0.1, 0.9)), "solver": ("heun", "heun"), "timesteps": ("1,0.5,0.25", (1.0, 0.5, 0.25)),
    "dcw": (None, True), "seed": ("9", 9), "batch": ("2", 2), "retake_seed": ("4", 4), "retake_variance": ("0.1", 0.1),
    "thinking": (None, True), "use_cot_caption": (None, True), "lm_temperature": ("0.7", 0.7), "lm_cfg_scale": ("2.5", 2.5),
    "lm_top_p": ("0.8", 0.8), "lm_top_k": ("5", 5), "max_new_tokens": ("100", 100), "normalize": (None, True),
    "loudness": ("-14", -14.0), "lrc": (None, True), "score": (None, True),
}
NEEDS = {"cover": ["--source", "s.wav"], "repaint": ["--source", "s.wav"], "add-layer": ["--source", "s.wav", "--track", "bass"],
         "extract": ["--source", "s.wav", "--track", "bass"], "complete": ["--source", "s.wav", "--tracks", "bass"]}


def _parse(argv: list[str]) -> GenerationRequest:
    return build_request(build_parser().parse_args(argv))


def test_every_field_has_a_sample_and_a_command() -> None:
    exposed = {name for cmd, (task, _) in COMMANDS.items() for name in fields_for(task)}
    assert exposed == set(GenerationRequest.model_fields) - SKIP
    assert exposed <= set(SAMPLES)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_flag_reaches_its_field_and_comes_back(command: str) -> None:
    task = COMMANDS[command][0]
    base = [command, *NEEDS.get(command, [])]
    for name in fields_for(task):
        text, value = SAMPLES[name]
        flag = flag_name(name)
        lyrics = ["--lyrics", "[Verse]\nla"] if name in ("lrc", "score") else []  # something to align
        argv = base + lyrics + ([flag] if text is None else [flag, text])
        request = _parse(argv)
        assert getattr(request, name) == value, (command, flag)
        assert name in request.model_fields_set
        back = _parse([command, *request_to_argv(request)])
        assert back == request, (command, flag)
        if text is None:  # --no-FLAG gives False
            assert getattr(_parse(base + ["--no-" + flag[2:]]), name) is False


def test_each_task_shows_only_its_own_flags() -> None:
    parser = build_parser()
    extract_help = parser._subparsers._group_actions[0].choices["extract"].format_help()
    assert "--track" in extract_help and "--caption" not in extract_help and "--lm-temperature" not in extract_help
    generate_help = parser._subparsers._group_actions[0].choices["generate"].format_help()
    assert "--source" not in generate_help and "(default: 0.85)" in generate_help and "--lm-cfg" in generate_help


def test_verbose_and_quiet_anywhere() -> None:
    parser = build_parser()
    assert parser.parse_args(["-v", "info"]).verbose == 1
    assert parser.parse_args(["info", "-v"]).verbose == 1
    assert parser.parse_args(["generate", "--quiet"]).quiet is True
    assert parser.parse_args(["--quiet", "generate"]).quiet is True
