"""Request validation (the request type, then resolution against the checkpoint) and task planning:
every bad input raises an actionable InvalidRequest."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from songstep.conditioning import (
    TaskInputs,
    chunk_mask,
    duration_samples,
    plan_task,
    source_latents,
    validate_source,
    window_mask,
)
from songstep.config import tiny_config
from songstep.constants import HOP_LENGTH, SAMPLE_RATE
from songstep.errors import InvalidRequest
from songstep.pipeline.plan import resolve
from songstep.request import GenerationRequest
from songstep.tasks import TASKS, get_task

TURBO = tiny_config(is_turbo=True)
BASE = tiny_config(is_turbo=False)
SRC = "song.wav"  # validation only checks presence


def validate_request(fields, config):
    request = fields if isinstance(fields, GenerationRequest) else GenerationRequest(**fields)
    return resolve(request, config).spec


def R(**fields):  # noqa: N802 - a request's fields, built inside the test
    return fields


def task_inputs(request: GenerationRequest) -> TaskInputs:
    return resolve(request, BASE).task


@pytest.mark.parametrize(
    "request_,config,message",
    [
        (R(task="repaint", source_audio=SRC, repaint_start=20, repaint_end=10), TURBO, "empty repaint window"),
        (R(task="repaint", source_audio=SRC, repaint_start=5, repaint_end=5), TURBO, "empty repaint window"),
        (R(task="cover", source_audio=SRC, strength=1.5), TURBO, "strength must be between 0 and 1"),
        (R(task="cover", source_audio=SRC, strength=-0.1), TURBO, "strength must be between 0 and 1"),
        (R(task="cover", source_audio=SRC, cover_noise_strength=2), TURBO, "cover_noise_strength must be between 0 and 1"),
        (R(task="lego", source_audio=SRC, tracks=("guitar",)), TURBO, "needs a base or sft model"),
        (R(task="extract", source_audio=SRC, tracks=("vocals",)), TURBO, "needs a base or sft model"),
        (R(task="complete", source_audio=SRC, tracks=("drums",)), TURBO, "needs a base or sft model"),
        (R(task="extract", source_audio=SRC, tracks=("kazoo",)), BASE, "unknown track name 'kazoo'"),
        (R(duration=30, steps=0), TURBO, "steps must be between 1 and 200, got 0"),
        (R(duration=30, steps=-3), BASE, "steps must be between 1 and 200, got -3"),
        (R(duration=30, steps=21), TURBO, "above the turbo limit of 20"),
        (R(duration=30, steps=201), BASE, "steps must be between 1 and 200, got 201"),
        (R(duration=30, guidance=-1), BASE, "guidance must be between 0 and 100"),
        (R(duration=9.9), TURBO, "duration must be between 10 and 600"),
        (R(duration=601), TURBO, "duration must be between 10 and 600"),
        (R(duration=30, batch=9), TURBO, "batch must be between 1 and 8"),
        (R(duration=30, bpm=400), TURBO, "bpm must be between 30 and 300"),
        (R(duration=30, keyscale="H major"), TURBO, "unknown key"),
        (R(duration=30, timesignature="5"), TURBO, "time signature"),
        (R(duration=30, language="xx"), TURBO, "unknown language"),
        (R(task="dance"), TURBO, "unknown task 'dance'"),
        (R(task="extract", source_audio=SRC, tracks=","), BASE, "empty track name"),
        (R(task="extract", source_audio=SRC), BASE, "needs a track name"),
        (R(duration=30, steps=2.5), TURBO, "steps: Input should be a valid integer"),
        (R(duration=30, lyrics=["a", "b"]), TURBO, "lyrics: Input should be a valid string"),
        (R(task="cover", source_audio=3), TURBO, "audio must be a path, a file object or a tensor, got int"),
        (R(duration=30, seed=2**70), TURBO, "seed must be between -1 and"),
        (R(duration=30, lm_temperature=float("nan")), TURBO, "lm_temperature"),
        (R(duration=30, max_new_tokens=-1), TURBO, "max_new_tokens must be between 1 and"),
        (R(duration=30, timesteps=(0.5, 0.9)), TURBO, "strictly decreasing"),
        (R(duration=30, audio_codes="<|audio_code_64000|>"), TURBO, "out of range"),
        (R(duration=30, colour="red"), TURBO, "unknown field 'colour'"),
    ],
)
def test_bad_requests(request_, config, message) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        validate_request(request_, config)


@pytest.mark.parametrize("task", ["cover", "repaint", "lego", "extract", "complete"])
def test_source_tasks_need_source(task: str) -> None:
    with pytest.raises(InvalidRequest, match=f"task '{task}' needs source audio"):
        validate_request(R(task=task, tracks=("drums",)), BASE)


def test_good_requests_pass() -> None:
    assert validate_request(GenerationRequest(duration=30, steps=20, timesignature="4/4", keyscale="F# minor"), TURBO).name == "text2music"
    assert validate_request(GenerationRequest(task="add_layer", source_audio=SRC, tracks=("guitar",)), BASE).name == "lego"
    assert validate_request(GenerationRequest(duration=30, steps=200, guidance=0), BASE).name == "text2music"


def test_result_longer_than_600_seconds() -> None:
    spec = get_task("repaint")
    src = 590 * SAMPLE_RATE
    assert spec.window
    validate_source(task_inputs(GenerationRequest(task="repaint", source_audio=SRC, repaint_start=-10, repaint_end=100)), src)
    with pytest.raises(InvalidRequest, match=r"the result would be 620\.0 s long; the limit is 600 s"):
        validate_source(task_inputs(GenerationRequest(task="repaint", source_audio=SRC, repaint_start=-10, repaint_end=610)), src)
    with pytest.raises(InvalidRequest, match="empty repaint window"):
        validate_source(task_inputs(GenerationRequest(task="repaint", source_audio=SRC, repaint_start=700)), src)
    with pytest.raises(InvalidRequest, match=r"after the source's end \(590\.00 s\)"):  # would leave a hole
        validate_source(task_inputs(GenerationRequest(task="repaint", source_audio=SRC, repaint_start=595, repaint_end=599)), src)


def test_duration_is_frame_quantised() -> None:
    plan = plan_task(task_inputs(GenerationRequest(duration=12.34)), None)
    assert duration_samples(12.34) == int(12.3 * 48000)
    assert plan.frames == 307 and plan.dit_frames == 307
    assert plan.seconds == pytest.approx(307 * HOP_LENGTH / SAMPLE_RATE)
    assert plan.window is None


def test_repaint_window_and_extension() -> None:
    assert get_task("repaint").window
    src = 20 * SAMPLE_RATE
    plan = plan_task(task_inputs(GenerationRequest(task="repaint", source_audio=SRC, repaint_start=4, repaint_end=8)), src)
    assert (plan.pad_left, plan.pad_right) == (0, 0)
    assert plan.window == (100, 200) and plan.frames == 500
    ext = plan_task(task_inputs(GenerationRequest(task="repaint", source_audio=SRC, repaint_start=-2, repaint_end=23)), src)
    assert ext.pad_left == 2 * SAMPLE_RATE and ext.pad_right == 3 * SAMPLE_RATE
    assert ext.frames == 25 * 25 and ext.window == (0, 625)


def test_tensors_follow_the_task_rows() -> None:
    silence = torch.full((400, 64), -1.0)
    source = torch.ones(300, 64)
    repaint = plan_task(task_inputs(GenerationRequest(task="repaint", source_audio=SRC, repaint_start=4, repaint_end=6)), 12 * SAMPLE_RATE)
    src = source_latents(repaint, source, silence)
    assert src.shape == (300, 64)
    assert (src[100:150] == -1).all() and (src[:100] == 1).all() and (src[150:] == 1).all()
    mask = window_mask(repaint)
    assert mask[100:150].all() and not mask[:100].any() and not mask[150:].any()
    assert chunk_mask(repaint).shape == (300, 64)
    t2m = plan_task(task_inputs(GenerationRequest(duration=10)), None)
    assert (source_latents(t2m, None, silence) == -1).all() and window_mask(t2m).all()
    lego = plan_task(task_inputs(GenerationRequest(task="lego", source_audio=SRC, tracks=("bass",))), 12 * SAMPLE_RATE)
    assert (source_latents(lego, source, silence) == 1).all() and window_mask(lego).all()


def test_no_task_name_branches_outside_tasks_py() -> None:
    names = "|".join([*TASKS, "add_layer", "add-layer"])
    quoted = "[\"']" + f"({names})" + "[\"']"
    subject = r"\b(task|task_type|task_name|spec|name|command|kind)\b[\w.\[\]\"']*"
    patterns = [
        re.compile(subject + r"\s*(==|!=)\s*" + quoted),  # task == "cover"
        re.compile(quoted + r"\s*(==|!=)\s*" + subject),  # "cover" == task
        re.compile(subject + r"\s+(not\s+)?in\s*[(\[{]\s*" + quoted),  # task in ("lego", ...)
    ]
    assert patterns[0].search('if task == "cover":') and patterns[2].search("if spec.name in ('lego', 'x')")
    assert patterns[0].search('if args.command == "repaint":')
    root = Path(__file__).resolve().parents[1] / "songstep"
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "tasks.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if any(p.search(line) for p in patterns):
                offenders.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert offenders == []
