"""The one request type: every user-facing parameter of every task, declared once.

`GenerationRequest` is a frozen pydantic model. Each field carries its type, range, default and
help text; the CLI's flags (`songstep.cli`), the Python keyword arguments of the Pipeline's task
methods, the server's JSON schema and the UI's controls are generated from or checked against it.
Validation happens here, once, when the request is built: every bad value of one request is
reported together (one line each) as `InvalidRequest`, and an unknown key is an error that names it.

Musical notation is normalised here, once: keys in any common spelling (`Am`, `A min`, `a minor`,
`C Major`, `F#m`, `Gb`) become `"A minor"`-style names, time signatures `6/8` → `"6"` and `N/4` →
`"N"`, language codes any case. Checks that need the loaded checkpoint (the family's step limit,
tasks that need a base model) happen when the request is resolved into a plan
(`songstep.pipeline.plan.resolve`), still before any audio is read or any model runs.

Field metadata for front ends lives in `json_schema_extra`: `x-group` (help section), `x-tasks`
(the tasks that use the field; absent = every task), `x-flag` (the CLI flag when it differs from
`--field-name`).
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from songstep.constants import (
    KEYSCALES,
    LANGUAGES,
    MAX_BATCH,
    MAX_BPM,
    MAX_CFG_STEPS,
    MAX_DURATION,
    MIN_BPM,
    MIN_DURATION,
    TIME_SIGNATURES,
    TRACK_NAMES,
)
from songstep.errors import InvalidRequest
from songstep.sampling.guidance import GUIDANCE
from songstep.sampling.solvers import SOLVERS
from songstep.tasks import TASKS, get_task

MAX_SEED = 2**63 - 1  # seeds are int64 (torch.Generator.manual_seed)
MAX_AUDIO_CODE = 63_999  # FSQ levels 8·8·8·5·5·5 = 64 000 codes
SOURCE_TASKS = tuple(name for name, spec in TASKS.items() if spec.needs_source)
SONG_TASKS = ("text2music", "cover", "repaint", "lego", "complete")  # tasks that take a caption and lyrics
PLANNED_TASKS = ("text2music",)  # the planner LM only plans songs without source audio


def _f(default: Any, help: str, group: str, *, tasks: tuple[str, ...] | None = None, flag: str | None = None,
       **constraints: Any) -> Any:
    extra: dict[str, Any] = {"x-group": group}
    if tasks is not None:
        extra["x-tasks"] = list(tasks)
    if flag is not None:
        extra["x-flag"] = flag
    return Field(default, description=help, json_schema_extra=extra, **constraints)


def _alias(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class GenerationRequest(BaseModel):
    """What a user asks for. `None` means "the model family's default" for sampler settings and
    "let the planner decide" for the musical metadata. Build it with keyword arguments or from
    JSON (`from_json`); `replace(**changes)` makes a validated copy."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True, populate_by_name=True,
                              validate_default=False, hide_input_in_errors=True)

    # -- what ---------------------------------------------------------------------------------
    task: str = _f("text2music", "what to make: " + ", ".join(TASKS), "task")
    caption: str = _f("", "style description: genre, instruments, mood, production", "song",
                      tasks=SONG_TASKS, validation_alias=_alias("caption", "prompt"))
    lyrics: str = _f("", "lyrics with section tags ([Verse], [Chorus]); '[Instrumental]' for none", "song",
                     tasks=SONG_TASKS)
    instrumental: bool = _f(False, "no vocals (lyrics become '[Instrumental]')", "song", tasks=SONG_TASKS)
    language: str = _f("unknown", "vocal language code, e.g. en, zh, ja (any case)", "song", tasks=SONG_TASKS)
    duration: float | None = _f(None, f"seconds, {MIN_DURATION:g}–{MAX_DURATION:g} (default: planned by the LM)",
                                "song", tasks=("text2music",), ge=MIN_DURATION, le=MAX_DURATION)
    bpm: int | None = _f(None, f"tempo, {MIN_BPM}–{MAX_BPM}", "song", tasks=SONG_TASKS, ge=MIN_BPM, le=MAX_BPM)
    keyscale: str | None = _f(None, "key, e.g. 'C major', 'F# minor', 'Am', 'Gb'", "song", tasks=SONG_TASKS,
                              flag="--key")
    timesignature: str | None = _f(None, "beats per bar: 2, 3, 4 or 6 (also '3/4', '6/8')", "song",
                                   tasks=SONG_TASKS, flag="--time-signature")
    tracks: tuple[str, ...] = _f((), "instrument track(s): " + ", ".join(TRACK_NAMES), "source",
                                 tasks=("lego", "extract", "complete"))
    source_audio: Any = _f(None, "source audio (a path, a file object or a [channels, samples] 48 kHz tensor)",
                           "source", tasks=SOURCE_TASKS, flag="--source")
    reference_audio: Any = _f(None, "reference audio whose timbre guides the result", "song", flag="--reference")
    repaint_start: float = _f(0.0, "window start, seconds (negative extends the song)", "source",
                              tasks=("repaint", "lego"), flag="--start", allow_inf_nan=False)
    repaint_end: float | None = _f(None, "window end, seconds (default: end of source; past it extends)", "source",
                                   tasks=("repaint", "lego"), flag="--end", allow_inf_nan=False)
    repaint_strength: float = _f(0.5, "0 keeps the source most outside the window, 1 least", "source",
                                 tasks=("repaint",), ge=0.0, le=1.0)
    strength: float = _f(1.0, "share of the steps that follow the source's structure, 0–1", "source",
                         tasks=("cover",), ge=0.0, le=1.0)
    cover_noise_strength: float = _f(0.0, "0–1: start from the noised source instead of pure noise", "source",
                                     tasks=("cover",), flag="--noise-strength", ge=0.0, le=1.0)
    audio_codes: str | None = _f(None, "5 Hz audio codes (<|audio_code_N|>…) to condition on", "song",
                                 tasks=("text2music", "cover"))
    # -- sampler ----------------------------------------------------------------------------------
    steps: int | None = _f(None, "diffusion steps (default: the family's: turbo 8, base/sft 32)", "sampling",
                           ge=1, le=MAX_CFG_STEPS, validation_alias=_alias("steps", "num_inference_steps"))
    shift: float | None = _f(None, "timestep shift (default: the family's, 3.0; turbo-shift1 1.0)", "sampling",
                             gt=0.0, le=100.0, allow_inf_nan=False)
    guidance: float | None = _f(None, "CFG scale, base/sft only (default 7.0)", "sampling", ge=0.0, le=100.0,
                                allow_inf_nan=False, validation_alias=_alias("guidance", "guidance_scale"))
    guidance_method: str = _f("apg", "how CFG combines: " + ", ".join(GUIDANCE), "sampling")
    cfg_interval: tuple[float, float] = _f((0.0, 1.0), "CFG applies for t in [start, end]", "sampling")
    solver: str = _f("euler", "integrator: " + ", ".join(SOLVERS), "sampling")
    method: str | None = _f(None, "deprecated: 'sde' is solver='sde'", "sampling")
    timesteps: tuple[float, ...] | None = _f(None, "custom timesteps in (0, 1], decreasing (overrides steps)",
                                             "sampling")
    dcw: bool | None = _f(None, "wavelet correction (default: on for turbo, off for base/sft)", "sampling")
    seed: int | None = _f(None, "takes get seed, seed+1, …; -1 or none = random", "sampling", ge=-1, le=MAX_SEED)
    batch: int = _f(1, f"takes, 1–{MAX_BATCH}", "sampling", ge=1, le=MAX_BATCH)
    retake_seed: int | None = _f(None, "seed of the retake noise mixed in by retake_variance", "sampling",
                                 ge=-1, le=MAX_SEED)
    retake_variance: float = _f(0.0, "0–1 share of retake noise", "sampling", ge=0.0, le=1.0)
    # -- planner LM (text2music) -----------------------------------------------------------------
    thinking: bool | None = _f(None, "let the LM write audio codes (default: on when an LM is loaded)",
                               "planner LM", tasks=PLANNED_TASKS)
    use_cot_caption: bool = _f(True, "use the LM's rewritten caption", "planner LM", tasks=PLANNED_TASKS,
                               flag="--caption-rewrite")
    lm_temperature: float = _f(0.85, "LM sampling temperature", "planner LM", tasks=PLANNED_TASKS, gt=0.0,
                               le=10.0, allow_inf_nan=False)
    lm_cfg_scale: float = _f(2.0, "LM CFG scale (codes phase)", "planner LM", tasks=PLANNED_TASKS, flag="--lm-cfg",
                             ge=1.0, le=20.0, allow_inf_nan=False)
    lm_top_p: float = _f(0.9, "LM nucleus sampling, 0–1 (1 = off)", "planner LM", tasks=PLANNED_TASKS, gt=0.0,
                         le=1.0, allow_inf_nan=False)
    lm_top_k: int = _f(0, "LM top-k (0 = off)", "planner LM", tasks=PLANNED_TASKS, ge=0)
    max_new_tokens: int | None = _f(None, "cap on the LM's free-text tokens (default 4032)", "planner LM",
                                    tasks=PLANNED_TASKS, ge=1, le=32768)
    # -- lyric timing --------------------------------------------------------------------------
    lrc: bool = _f(False, "lyric timestamps per take (CLI: <name>.lrc and <name>.vtt beside the audio)", "lyric timing",
                   tasks=SONG_TASKS)
    score: bool = _f(False, "the lyric-alignment score per take (and, with an LM loaded, AutoScore)", "lyric timing",
                     tasks=SONG_TASKS)
    # -- output level ---------------------------------------------------------------------------
    normalize: bool | None = _f(None, "peak-normalise to -1 dBFS (default: on for new songs, covers and "
                                "repaints; off for stems, layers and completions)", "output")
    loudness: float | None = _f(None, "integrated loudness target in LUFS, e.g. -14 (needs songstep[loudness])",
                                "output", ge=-70.0, le=0.0, allow_inf_nan=False)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise InvalidRequest(format_errors(e)) from None

    # -- validators ---------------------------------------------------------------------------------
    @field_validator("task", mode="before")
    @classmethod
    def _task(cls, v: Any) -> str:
        return get_task(str(v)).name

    @field_validator("language", mode="before")
    @classmethod
    def _language(cls, v: Any) -> str:
        return normalize_language(v)

    @field_validator("keyscale", mode="before")
    @classmethod
    def _key(cls, v: Any) -> str | None:
        return None if v in (None, "") else normalize_key(v)

    @field_validator("timesignature", mode="before")
    @classmethod
    def _ts(cls, v: Any) -> str | None:
        return None if v in (None, "") else normalize_timesignature(v)

    @field_validator("tracks", mode="before")
    @classmethod
    def _tracks(cls, v: Any) -> tuple[str, ...]:
        return normalize_tracks(v)

    @field_validator("source_audio", "reference_audio", mode="before")
    @classmethod
    def _audio(cls, v: Any) -> Any:
        return check_audio_input(v)

    @field_validator("audio_codes", mode="before")
    @classmethod
    def _codes(cls, v: Any) -> str | None:
        return None if v in (None, "") else check_codes(v)

    @field_validator("seed", "retake_seed", mode="after")
    @classmethod
    def _seed(cls, v: int | None) -> int | None:
        return None if v == -1 else v

    @field_validator("guidance_method", mode="before")
    @classmethod
    def _guidance(cls, v: Any) -> str:
        name = str(v).lower()
        name = {"apg_classic": "apg"}.get(name, name)
        if name not in GUIDANCE:
            raise ValueError(f"unknown guidance method {v!r}; choose from {', '.join(GUIDANCE)}")
        return name

    @field_validator("solver", mode="before")
    @classmethod
    def _solver(cls, v: Any) -> str:
        name = str(v).lower()
        if name not in SOLVERS:
            raise ValueError(f"unknown solver {v!r}; choose from {', '.join(SOLVERS)}")
        return name

    @field_validator("cfg_interval", mode="after")
    @classmethod
    def _interval(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"must satisfy 0 ≤ start ≤ end ≤ 1, got {tuple(v)}")
        return (float(lo), float(hi))

    @field_validator("timesteps", mode="after")
    @classmethod
    def _timesteps(cls, v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if v is None:
            return None
        if not v or not all(math.isfinite(t) and 0.0 < t <= 1.0 for t in v):
            raise ValueError("each timestep must lie in (0, 1]")
        if any(b >= a for a, b in zip(v, v[1:])):
            raise ValueError("timesteps must be strictly decreasing")
        return tuple(float(t) for t in v)

    @model_validator(mode="after")
    def _consistent(self) -> GenerationRequest:
        problems = []
        if self.method is not None:
            if self.method not in ("ode", "sde"):
                problems.append(f"method: unknown method {self.method!r}; choose from ode, sde")
            elif self.method == "sde" and self.solver != "sde":
                object.__setattr__(self, "solver", "sde")
                self.model_fields_set.add("solver")
            object.__setattr__(self, "method", None)
            self.model_fields_set.discard("method")
        spec = get_task(self.task)
        if spec.window and self.repaint_end is not None and self.repaint_end >= 0 and self.repaint_start >= self.repaint_end:
            problems.append(f"empty repaint window: start {self.repaint_start:g} s is not before end {self.repaint_end:g} s")
        if spec.track_mode == "one" and len(self.tracks) > 1:
            problems.append(f"tracks: task {self.task!r} takes exactly one track, got {len(self.tracks)}")
        if spec.track_mode != "none" and not self.tracks:
            problems.append(f"tracks: task {self.task!r} needs a track name ({', '.join(TRACK_NAMES[:4])}, …)")
        if spec.needs_source and self.source_audio is None:
            problems.append(f"source_audio: task {self.task!r} needs source audio")
        if (self.lrc or self.score) and (self.instrumental or self.lyrics.strip().lower() in ("", "[instrumental]")):
            wanted = " / ".join(n for n in ("lrc", "score") if getattr(self, n))
            problems.append(f"{wanted}: nothing to align: the request has no lyrics (instrumental)")
        if self.seed is not None and self.seed + self.batch - 1 > MAX_SEED:
            problems.append(f"seed: {self.seed} + batch {self.batch} passes the largest seed {MAX_SEED}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # -- conveniences ----------------------------------------------------------------------------
    def replace(self, **changes: Any) -> GenerationRequest:
        """A validated copy with `changes` applied."""
        kept = {name: getattr(self, name) for name in self.model_fields_set}
        return type(self)(**{**kept, **changes})

    def fields(self) -> dict[str, Any]:
        """The fields as given (sources stay paths/tensors), for `replace` and `GenerationRequest(**…)`."""
        return {name: getattr(self, name) for name in type(self).model_fields}

    def to_json(self, full: bool = False) -> dict[str, Any]:
        """The JSON form stored in sidecars and tags: the fields the user set (every field with
        `full=True`), sources as paths (a tensor or file object cannot be stored and is written as
        a `"<tensor>"`/`"<file>"` marker)."""
        out: dict[str, Any] = {}
        names = type(self).model_fields if full else ["task", *sorted(self.model_fields_set - {"task"})]
        for name in names:
            value = getattr(self, name)
            if name in ("source_audio", "reference_audio"):
                value = _audio_json(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        out.pop("method", None)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GenerationRequest:
        """The inverse of `to_json` (markers of unstorable sources are refused)."""
        data = dict(data)
        for key in ("source_audio", "reference_audio"):
            if data.get(key) in ("<tensor>", "<file>"):
                raise InvalidRequest(f"{key}: the original was an in-memory {data[key][1:-1]} and was not stored")
        return cls(**data)

    def defaulted(self) -> set[str]:
        """Fields the user did not set (their values come from defaults)."""
        return set(type(self).model_fields) - set(self.model_fields_set) - {"task"}


def format_errors(error: ValidationError) -> str:
    """One line per problem, each naming the field."""
    lines = []
    for item in error.errors(include_url=False):
        loc = ".".join(str(p) for p in item["loc"] if not isinstance(p, int)) or "request"
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = f"unknown field {loc!r}"
            close = _close_field(loc)
            if close:
                msg += f" (did you mean {close!r}?)"
            lines.append(msg)
            continue
        msg = msg.removeprefix("Value error, ")
        if item["type"] in _RANGE_ERRORS and "input" in item:
            bounds = _bounds(loc)
            if bounds and item["type"] in _BOUND_ERRORS:
                lines.append(f"{loc} must be {bounds}, got {item['input']!r}")
                continue
            msg = f"{msg}, got {item['input']!r}"
        lines.append(f"{loc}: {msg}")
    return "\n".join(lines)


_UNITS = {"loudness": " LUFS", "duration": " seconds", "repaint_start": " s", "repaint_end": " s"}
_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _bounds(name: str) -> str | None:
    """'between -70 and 0 LUFS' from a field's constraints."""
    info = GenerationRequest.model_fields.get(name)
    if info is None:
        return None
    lo = hi = None
    for m in info.metadata:
        lo = getattr(m, "ge", None) if getattr(m, "ge", None) is not None else (getattr(m, "gt", None) if lo is None else lo)
        hi = getattr(m, "le", None) if getattr(m, "le", None) is not None else (getattr(m, "lt", None) if hi is None else hi)
    unit = _UNITS.get(name, "")
    lo, hi = (None if v is None else (f"{v:g}" if isinstance(v, float) else str(v)) for v in (lo, hi))
    if lo is not None and hi is not None:
        return f"between {lo} and {hi}{unit}"
    return f"at least {lo}{unit}" if lo is not None else (f"at most {hi}{unit}" if hi is not None else None)


_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number",
                 "int_parsing", "float_parsing", "int_from_float", "bool_parsing", "string_type"}


def _close_field(name: str) -> str | None:
    import difflib

    found = difflib.get_close_matches(name, list(GenerationRequest.model_fields), n=1)
    return found[0] if found else None


# -- notation -------------------------------------------------------------------------------------
_KEY = re.compile(
    r"^\s*([A-Ga-g])\s*(#|♯|b|♭|-?sharp|-?flat)?\s*(major|minor|maj|min|m|M|dur|moll)?\s*$", re.IGNORECASE
)


def normalize_key(value: Any) -> str:
    """'Am', 'A min', 'a minor', 'C Major', 'F#m', 'Gb', 'f# min', 'Bb maj' → 'A minor', 'C major', …"""
    text = str(value).strip()
    m = _KEY.match(text)
    if not m:
        raise ValueError(f"unknown key {value!r}; write it like 'C major', 'F# minor' or 'Am'")
    note, acc, mode = m.group(1).upper(), (m.group(2) or ""), m.group(3) or ""
    acc = {"sharp": "#", "-sharp": "#", "flat": "b", "-flat": "b"}.get(acc.lower(), acc)
    if mode == "M":
        mode = "major"
    minor = mode.lower() in ("minor", "min", "m", "moll") and mode != "M"
    name = f"{note}{acc} {'minor' if minor else 'major'}"
    if name not in KEYSCALES:  # pragma: no cover - every match above is in the table
        raise ValueError(f"unknown key {value!r}")
    return name


def normalize_timesignature(value: Any) -> str:
    """'4', 4, '4/4' → '4'; '6/8' → '6'; anything else outside 2, 3, 4, 6 is an error."""
    text = str(value).strip()
    if "/" in text:
        num, _, den = text.partition("/")
        num, den = num.strip(), den.strip()
        if (num, den) == ("6", "8") or den == "4":
            text = num
        else:
            raise ValueError(f"time signature {value!r}: use N/4 or 6/8 (N = {', '.join(TIME_SIGNATURES)})")
    if text not in TIME_SIGNATURES:
        raise ValueError(f"time signature must be one of {', '.join(TIME_SIGNATURES)} (or N/4, 6/8), got {value!r}")
    return text


def normalize_language(value: Any) -> str:
    """Language codes in any case; region suffixes dropped ('en-US' → 'en', 'zh_CN' → 'zh')."""
    text = str(value if value is not None else "unknown").strip().lower() or "unknown"
    if text not in LANGUAGES:
        base = re.split(r"[-_]", text)[0]
        if base in LANGUAGES:
            return base
        raise ValueError(f"unknown language {value!r}; use a code such as 'en', 'zh', 'ja' or 'unknown'")
    return text


def normalize_tracks(value: Any) -> tuple[str, ...]:
    """'drums,bass', ['Drums'] → ('drums', 'bass'); empty entries and unknown names refused."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    if not all(isinstance(t, str) for t in items):
        raise ValueError("track names must be strings")
    names = tuple(t.strip().lower() for t in items)
    if isinstance(value, str) and value.strip() == "":
        return ()
    if any(not n for n in names):
        raise ValueError(f"empty track name in {value!r}")
    for n in names:
        if n not in TRACK_NAMES:
            raise ValueError(f"unknown track name {n!r}; choose from: {', '.join(TRACK_NAMES)}")
    return names


def check_audio_input(value: Any) -> Any:
    """Paths, file objects and tensors only: an int is never taken as a file descriptor."""
    if value is None or isinstance(value, str | Path | torch.Tensor):
        return value
    if isinstance(value, bool | int | float):
        raise ValueError(f"audio must be a path, a file object or a tensor, got {type(value).__name__}")
    if isinstance(value, io.IOBase) or hasattr(value, "read"):
        return value
    raise ValueError(f"audio must be a path, a file object or a tensor, got {type(value).__name__}")


_CODE = re.compile(r"<\|audio_code_(\d+)\|>")


def check_codes(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("audio codes must be a string of <|audio_code_N|> tokens")
    codes = [int(c) for c in _CODE.findall(value)]
    if not codes:
        raise ValueError("no <|audio_code_N|> tokens found")
    bad = [c for c in codes if c > MAX_AUDIO_CODE]
    if bad:
        raise ValueError(f"audio code {bad[0]} is out of range (0–{MAX_AUDIO_CODE})")
    return value


def _audio_json(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return "<tensor>"
    name = getattr(value, "name", None)
    return name if isinstance(name, str) and Path(name).is_file() else "<file>"


# -- seeds: one policy --------------------------------------------------------------------------------
def take_seeds(seed: int | None, batch: int) -> list[int]:
    """The one seed policy. A user seed N gives the takes N, N+1, …, N+batch−1 (validated to stay
    within int64); no seed (or -1) starts the same run of consecutive seeds at a random 32-bit N, so a
    random batch is remade from its first seed."""
    if seed is None or seed == -1:
        import random

        seed = random.SystemRandom().randrange(0, 2**32)
    if not 0 <= int(seed) <= MAX_SEED - batch + 1:
        raise InvalidRequest(f"seed must be -1 (random) or between 0 and {MAX_SEED - batch + 1}, got {seed}")
    return [int(seed) + i for i in range(batch)]


def next_seed(last: int) -> int:
    """The seed after `last` (AutoGen's next batch), wrapping to 0 past the largest seed."""
    return 0 if last >= MAX_SEED else last + 1


def load_request_file(path: str | Path) -> dict[str, Any]:
    """A sidecar (`.json`, as written next to every take) or a TOML file with the same fields.
    A sidecar's `request` section is used; upstream-style flat TOML files work too."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidRequest(f"{path}: cannot read ({e})") from e
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (ValueError, TypeError) as e:
        raise InvalidRequest(f"{path}: not valid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'} ({e})") from e
    if not isinstance(data, dict):
        raise InvalidRequest(f"{path}: expected a table of request fields")
    return data
