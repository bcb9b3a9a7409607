"""The UI's controls, derived from and checked against the request type.

Every request-bound control is named by its `GenerationRequest` field; its range, default and
help come from that field, and which task shows it comes from the field's `x-tasks`. Turning the
controls' values into request fields (`request_fields`) is the only place the UI shapes a request;
the request type itself validates them (`validate`), so a bad value reads exactly as it does on
the command line.
"""

from __future__ import annotations

from typing import Any

from songstep.errors import InvalidRequest
from songstep.request import GenerationRequest

# Fields that have a control in the Custom form and the advanced settings.
SONG_FIELDS = ("caption", "lyrics", "instrumental", "language", "duration", "bpm", "keyscale", "timesignature")
TASK_FIELDS = ("source_audio", "strength", "cover_noise_strength", "repaint_start", "repaint_end", "repaint_strength",
               "tracks", "reference_audio")
SAMPLER_FIELDS = ("steps", "shift", "guidance", "guidance_method", "solver", "seed", "batch")
LM_FIELDS = ("use_cot_caption", "lm_temperature", "lm_cfg_scale", "lm_top_p", "lm_top_k")
BOUND_FIELDS = SONG_FIELDS + TASK_FIELDS + SAMPLER_FIELDS + LM_FIELDS
# Controls that map onto one field in another shape: the CFG interval's two ends.
PAIR_FIELDS = {"cfg_start": ("cfg_interval", 0), "cfg_end": ("cfg_interval", 1)}
# Request fields the UI leaves to their defaults on purpose (`thinking` is the LM on/off switch,
# sent as the worker's option; audio codes, custom timesteps and level are CLI/API-only).
NOT_IN_UI = ("task", "method", "thinking", "audio_codes", "timesteps", "dcw", "retake_seed", "retake_variance",
             "max_new_tokens", "normalize", "loudness",
             "lrc", "score")  # lyric timing: the take panels ask the pipeline for it on demand
UI_TASKS = ("text2music", "cover", "repaint", "lego", "extract", "complete")
INT_FIELDS = {"bpm", "steps", "seed", "batch", "lm_top_k"}
# Optional numbers: typed into text boxes, so an empty box means "not given" (None).
TEXT_NUMBERS = ("duration", "bpm", "repaint_end", "steps", "shift", "guidance")
# Fields whose "not given" is an empty control (None): left out so the request uses its default.
OPTIONAL = {name for name, info in GenerationRequest.model_fields.items() if info.default is None}


def check_controls() -> None:
    """Every control names a real request field and every UI task is a real task."""
    from songstep.tasks import TASKS

    fields = GenerationRequest.model_fields
    unknown = [n for n in BOUND_FIELDS if n not in fields] + [p[0] for p in PAIR_FIELDS.values() if p[0] not in fields]
    if unknown:
        raise RuntimeError(f"UI controls name no request field: {unknown}")
    missing = [n for n in fields if n not in BOUND_FIELDS and n not in NOT_IN_UI
               and n not in {p[0] for p in PAIR_FIELDS.values()}]
    if missing:
        raise RuntimeError(f"request fields with no UI control (add one or list them in NOT_IN_UI): {missing}")
    bad_tasks = [t for t in UI_TASKS if t not in TASKS]
    if bad_tasks:
        raise RuntimeError(f"UI tasks unknown to songstep.tasks: {bad_tasks}")


def tasks_of(name: str) -> tuple[str, ...]:
    """The tasks whose form shows field `name` (its `x-tasks`; every task when absent)."""
    field, _ = PAIR_FIELDS.get(name, (name, 0))
    extra = GenerationRequest.model_fields[field].json_schema_extra or {}
    return tuple(extra["x-tasks"]) if extra.get("x-tasks") is not None else UI_TASKS


def visible(name: str, task: str) -> bool:
    return task in tasks_of(name)


def bounds(name: str) -> tuple[float | None, float | None]:
    """(minimum, maximum) of a numeric field, from its constraints."""
    lo = hi = None
    for m in GenerationRequest.model_fields[name].metadata:
        lo = next((getattr(m, a) for a in ("ge", "gt") if getattr(m, a, None) is not None), lo)
        hi = next((getattr(m, a) for a in ("le", "lt") if getattr(m, a, None) is not None), hi)
    return lo, hi


def default(name: str) -> Any:
    field, index = PAIR_FIELDS.get(name, (name, None))
    value = GenerationRequest.model_fields[field].default
    return value[index] if index is not None else value


def help_text(name: str) -> str:
    field, _ = PAIR_FIELDS.get(name, (name, 0))
    return GenerationRequest.model_fields[field].description or ""


def _number(name: str, value: Any) -> float:
    """A number typed into a text box (optional numbers are text boxes: empty = not given)."""
    try:
        return float(str(value).strip().replace(",", "."))
    except ValueError:
        raise InvalidRequest(f"{name}: {value!r} is not a number") from None


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or value == []


def request_fields(task: str, values: dict[str, Any]) -> dict[str, Any]:
    """Request fields from control values: only the fields `task` uses, empty optional controls
    left out, whole numbers as ints, the CFG interval from its two ends, track lists as tuples."""
    fields: dict[str, Any] = {"task": task}
    pair = [default("cfg_start"), default("cfg_end")]
    for name, value in values.items():
        if name in PAIR_FIELDS:
            field, index = PAIR_FIELDS[name]
            if not visible(field, task):
                continue
            pair[index] = default(name) if _blank(value) else float(value)
            fields[field] = tuple(pair)
            continue
        if name not in GenerationRequest.model_fields or not visible(name, task):
            continue
        if _blank(value):
            if name in OPTIONAL or name in ("tracks",):
                continue
            value = default(name)
        if name in TEXT_NUMBERS:
            value = _number(name, value)
        if name in INT_FIELDS and isinstance(value, float):
            if not value.is_integer():
                raise InvalidRequest(f"{name} must be a whole number, got {value:g}")
            value = int(value)
        if name == "tracks":
            value = tuple([value] if isinstance(value, str) else value)
        fields[name] = value
    return fields


def validate(fields: dict[str, Any]) -> GenerationRequest:
    """The request (raises `InvalidRequest` with one line per problem)."""
    return GenerationRequest(**fields)
