"""Request and response schemas of the HTTP API (pydantic).

`ReleaseTaskParams` accepts upstream ACE-Step's `/release_task` fields under all of upstream's
spellings (snake and camel case, `prompt`/`caption`, `audio_duration`/`duration`, `key_scale`/
`keyscale`, a nested `metas`/`metadata`/`user_metadata` object) with upstream's API defaults
(thinking off, vocal language `en`, shift 3.0, batch 2, mp3 output). `generation_fields()` turns
it into a dict of songstep's own `GenerationRequest` field names, and `to_request()` is the one
place that builds the request type from such a dict.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from songstep.request import GenerationRequest

AUDIO_FORMATS = ("mp3", "wav", "flac", "ogg")
_TUPLE_FIELDS = ("tracks", "cfg_interval", "timesteps")
_METAS_KEYS = ("metas", "metadata", "user_metadata")
_KEY = re.compile(r"^\s*([A-Ga-g])\s*([#b♯♭]?)\s*(m|min|minor|maj|major)?\s*$", re.I)


def keyscale(text: str | None) -> str | None:
    """Upstream clients write keys as "C Major", "Am", "f# min": → songstep's "C major", "A minor"."""
    if not text or not text.strip():
        return None
    m = _KEY.match(text)
    if m is None:
        return text.strip()  # validation names the problem
    note, accidental, mode = m.groups()
    minor = (mode or "").lower() in ("m", "min", "minor") if mode != "M" else False
    return f"{note.upper()}{accidental} {'minor' if minor else 'major'}"


def timesignature(text: str | None) -> str | None:
    """Upstream's time signatures are 2, 3, 4, 6 for 2/4, 3/4, 4/4, 6/8: "6/8" → "6"."""
    if not text or not str(text).strip():
        return None
    return str(text).strip().split("/")[0].strip()


def to_request(fields: dict[str, Any]) -> GenerationRequest:
    """The request type from a dict of its field names (lists become tuples). The only place the
    server constructs a `GenerationRequest`."""
    fields = dict(fields)
    for name in _TUPLE_FIELDS:
        if isinstance(fields.get(name), list):
            fields[name] = tuple(fields[name])
    return GenerationRequest(**fields)


def envelope(data: Any, code: int = 200, error: str | None = None) -> dict[str, Any]:
    """Upstream's response wrapper: `{data, code, error, timestamp (ms), extra}`."""
    return {"data": data, "code": code, "error": error, "timestamp": int(time.time() * 1000), "extra": None}


class Envelope(BaseModel):
    """Every upstream-compatible route answers with this wrapper (errors too: `data` null)."""

    data: Any = None
    code: int = 200
    error: str | None = None
    timestamp: int
    extra: Any = None


def _alias(*names: str) -> Any:
    return AliasChoices(*names)


def _blank_to_none(data: dict[str, Any]) -> dict[str, Any]:
    """Form fields arrive as strings: an empty string means "not given"."""
    return {k: (None if isinstance(v, str) and v.strip() == "" and k not in ("prompt", "caption", "lyrics") else v)
            for k, v in data.items()}


class ReleaseTaskParams(BaseModel):
    """`POST /release_task` (JSON, form or multipart). Unknown fields are ignored, as upstream does."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", coerce_numbers_to_str=True)

    prompt: str = Field("", validation_alias=_alias("prompt", "caption"), max_length=4096)
    lyrics: str = Field("", max_length=16384)
    thinking: bool = False
    sample_mode: bool = Field(False, validation_alias=_alias("sample_mode", "sampleMode"))
    sample_query: str = Field("", validation_alias=_alias("sample_query", "sampleQuery", "description", "desc"),
                              max_length=4096)
    use_format: bool = Field(False, validation_alias=_alias("use_format", "useFormat", "format"))
    model: str | None = Field(None, validation_alias=_alias("model", "model_name", "modelName", "dit_model", "ditModel"))
    bpm: int | None = Field(None, ge=30, le=300)
    key_scale: str = Field("", validation_alias=_alias("key_scale", "keyscale", "keyScale", "key"), max_length=32)
    time_signature: str = Field("", validation_alias=_alias("time_signature", "timesignature", "timeSignature"),
                                max_length=8)
    audio_duration: float | None = Field(
        None, validation_alias=_alias("audio_duration", "duration", "audioDuration", "target_duration", "targetDuration"))
    vocal_language: str = Field("en", validation_alias=_alias("vocal_language", "vocalLanguage", "language"),
                                max_length=16)
    instrumental: bool = False
    inference_steps: int | None = Field(None, ge=1, le=200,
                                        validation_alias=_alias("inference_steps", "inferenceSteps"))
    guidance_scale: float | None = Field(None, ge=0, le=50, validation_alias=_alias("guidance_scale", "guidanceScale"))
    use_random_seed: bool = Field(True, validation_alias=_alias("use_random_seed", "useRandomSeed"))
    seed: int | str = -1
    batch_size: int = Field(2, ge=1, le=8, validation_alias=_alias("batch_size", "batchSize"))
    repainting_start: float = Field(0.0, validation_alias=_alias("repainting_start", "repaintingStart"))
    repainting_end: float | None = Field(None, validation_alias=_alias("repainting_end", "repaintingEnd"))
    repaint_strength: float = Field(0.5, ge=0, le=1, validation_alias=_alias("repaint_strength", "repaintStrength"))
    audio_cover_strength: float = Field(1.0, ge=0, le=1,
                                        validation_alias=_alias("audio_cover_strength", "audioCoverStrength"))
    cover_noise_strength: float = Field(0.0, ge=0, le=1,
                                        validation_alias=_alias("cover_noise_strength", "coverNoiseStrength"))
    task_type: str = Field("text2music", validation_alias=_alias("task_type", "taskType"))
    track_name: str | None = Field(None, validation_alias=_alias("track_name", "trackName"))
    track_classes: list[str] | None = Field(None, validation_alias=_alias("track_classes", "trackClasses"))
    use_adg: bool = Field(False, validation_alias=_alias("use_adg", "useAdg"))
    cfg_interval_start: float = Field(0.0, ge=0, le=1, validation_alias=_alias("cfg_interval_start", "cfgIntervalStart"))
    cfg_interval_end: float = Field(1.0, ge=0, le=1, validation_alias=_alias("cfg_interval_end", "cfgIntervalEnd"))
    infer_method: Literal["ode", "sde"] = Field("ode", validation_alias=_alias("infer_method", "inferMethod"))
    shift: float = Field(3.0, gt=0, le=10)
    timesteps: list[float] | None = Field(None, max_length=200)
    audio_format: Literal["mp3", "wav", "flac", "ogg"] = Field("mp3", validation_alias=_alias("audio_format", "audioFormat"))
    audio_code_string: str = Field("", validation_alias=_alias("audio_code_string", "audioCodeString"))
    reference_audio_path: str | None = Field(None, validation_alias=_alias(
        "reference_audio_path", "ref_audio_path", "referenceAudioPath", "refAudioPath"))
    src_audio_path: str | None = Field(None, validation_alias=_alias(
        "src_audio_path", "ctx_audio_path", "sourceAudioPath", "srcAudioPath", "ctxAudioPath"))
    lm_model_path: str | None = Field(None, validation_alias=_alias("lm_model_path", "lmModelPath"))
    lm_backend: str | None = Field(None, validation_alias=_alias("lm_backend", "lmBackend"))
    lm_temperature: float = Field(0.85, ge=0, le=5, validation_alias=_alias("lm_temperature", "lmTemperature"))
    lm_cfg_scale: float = Field(2.5, ge=0, le=20, validation_alias=_alias("lm_cfg_scale", "lmCfgScale"))
    lm_top_k: int | None = Field(None, ge=0, validation_alias=_alias("lm_top_k", "lmTopK"))
    lm_top_p: float | None = Field(0.9, ge=0, le=1, validation_alias=_alias("lm_top_p", "lmTopP"))
    lm_repetition_penalty: float = Field(1.0, gt=0, le=5,
                                         validation_alias=_alias("lm_repetition_penalty", "lmRepetitionPenalty"))
    lm_negative_prompt: str = Field("NO USER INPUT", validation_alias=_alias("lm_negative_prompt", "lmNegativePrompt"))
    use_cot_caption: bool = Field(True, validation_alias=_alias("use_cot_caption", "cot_caption", "cot-caption"))
    use_cot_language: bool = Field(True, validation_alias=_alias("use_cot_language", "cot_language", "cot-language"))
    constrained_decoding: bool = Field(True, validation_alias=_alias(
        "constrained_decoding", "constrainedDecoding", "constrained"))
    enable_normalization: bool = Field(True, validation_alias=_alias("enable_normalization", "enableNormalization"))
    ai_token: str | None = Field(None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _flatten(cls, data: Any) -> Any:
        """Merge a nested `metas` / `metadata` / `user_metadata` object (a dict or a JSON string)
        into the top level; top-level values win."""
        if not isinstance(data, dict):
            return data
        data = _blank_to_none(dict(data))
        for key in _METAS_KEYS:
            nested = data.pop(key, None)
            if isinstance(nested, str) and nested.strip():
                try:
                    nested = json.loads(nested)
                except ValueError as exc:
                    raise ValueError(f"{key} must be a JSON object") from exc
            if isinstance(nested, dict):
                for k, v in nested.items():
                    data.setdefault(k, v)
        return {k: v for k, v in data.items() if v is not None}

    @field_validator("timesteps", mode="before")
    @classmethod
    def _timesteps(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [float(x) for x in value.replace(" ", "").split(",") if x]
        return value

    @field_validator("track_classes", mode="before")
    @classmethod
    def _track_classes(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = [t.strip() for t in value.split(",") if t.strip()]
            return parsed if isinstance(parsed, list) else [str(parsed)]
        return value

    @field_validator("audio_code_string", mode="before")
    @classmethod
    def _codes(cls, value: Any) -> Any:
        return "".join(str(v) for v in value) if isinstance(value, list) else value

    def chosen_seed(self) -> int | None:
        """Upstream: the seed counts only when use_random_seed is false; `"42,123"` gives the first
        take's seed (the other takes follow it)."""
        raw = str(self.seed).split(",")[0].strip()
        try:
            seed = int(raw)
        except ValueError as exc:
            raise ValueError(f"seed must be an integer or a comma-separated list of integers, got {self.seed!r}") from exc
        return seed if seed >= 0 and not self.use_random_seed else None

    def tracks(self) -> list[str]:
        if self.track_classes:
            return list(self.track_classes)
        return [self.track_name] if self.track_name else []

    def generation_fields(self) -> dict[str, Any]:
        """songstep's request fields (JSON-ready; audio paths are filled in by the server)."""
        language = (self.vocal_language or "unknown").strip().lower() or "unknown"
        end = self.repainting_end
        return {
            "task": self.task_type,
            "caption": self.prompt,
            "lyrics": self.lyrics,
            "instrumental": self.instrumental,
            "language": language,
            "duration": self.audio_duration if self.audio_duration and self.audio_duration > 0 else None,
            "bpm": self.bpm,
            "keyscale": keyscale(self.key_scale),
            "timesignature": timesignature(self.time_signature),
            "tracks": self.tracks(),
            "repaint_start": self.repainting_start,
            "repaint_end": None if end is None or end < 0 else end,
            "repaint_strength": self.repaint_strength,
            "strength": self.audio_cover_strength,
            "cover_noise_strength": self.cover_noise_strength,
            "audio_codes": self.audio_code_string or None,
            "steps": self.inference_steps,
            "shift": self.shift,
            "guidance": self.guidance_scale,
            "guidance_method": "adg" if self.use_adg else "apg",
            "cfg_interval": [self.cfg_interval_start, self.cfg_interval_end],
            "method": self.infer_method,
            "timesteps": self.timesteps,
            "seed": self.chosen_seed(),
            "batch": self.batch_size,
        }

    def job_options(self) -> dict[str, Any]:
        """What the worker needs besides the request: planner switches and output format."""
        return {
            "thinking": self.thinking,
            "sample_mode": self.sample_mode or bool(self.sample_query and not self.prompt),
            "sample_query": self.sample_query,
            "use_format": self.use_format,
            "audio_format": self.audio_format,
            "normalize": self.enable_normalization,
            "lm_model": self.lm_model_path,
            "plan": {
                "use_cot_caption": self.use_cot_caption,
                "use_cot_language": self.use_cot_language,
                "cfg_scale": self.lm_cfg_scale,
                "temperature": self.lm_temperature,
                "top_p": self.lm_top_p if self.lm_top_p is not None else 1.0,
                "top_k": self.lm_top_k or 0,
                "repetition_penalty": self.lm_repetition_penalty,
                "negative_prompt": self.lm_negative_prompt,
                "constrained": self.constrained_decoding,
            },
        }


class QueryResultParams(BaseModel):
    """`POST /query_result`: a list of task ids (a JSON array or its JSON string)."""

    model_config = ConfigDict(extra="ignore")

    task_id_list: list[str] = Field(default_factory=list, max_length=200)
    ai_token: str | None = Field(None, exclude=True)

    @field_validator("task_id_list", mode="before")
    @classmethod
    def _ids(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                value = [v.strip() for v in value.split(",") if v.strip()]
        return value if isinstance(value, list) else [value]


class FormatInputParams(BaseModel):
    """`POST /format_input`: caption and lyrics to enhance; metas as the JSON string `param_obj`."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    prompt: str = Field("", validation_alias=_alias("prompt", "caption"), max_length=4096)
    lyrics: str = Field("", max_length=16384)
    temperature: float = Field(0.85, ge=0, le=5)
    param_obj: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None
    ai_token: str | None = Field(None, exclude=True)

    @field_validator("param_obj", mode="before")
    @classmethod
    def _param_obj(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = json.loads(value) if value.strip() else {}
        if not isinstance(value, dict):
            raise ValueError("param_obj must be a JSON object")
        return value


class CreateSampleParams(BaseModel):
    """`POST /v1/create_sample`: one sentence → a full song description (simple mode)."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    query: str = Field("", validation_alias=_alias("query", "sample_query", "sampleQuery", "description", "desc"),
                       max_length=4096)
    instrumental: bool = False
    vocal_language: str | None = Field(None, validation_alias=_alias("vocal_language", "vocalLanguage", "language"))
    temperature: float = Field(0.85, ge=0, le=5, validation_alias=_alias("temperature", "lm_temperature"))
    seed: int | None = None
    ai_token: str | None = Field(None, exclude=True)


class RandomSampleParams(BaseModel):
    model_config = ConfigDict(extra="ignore")

    sample_type: Literal["simple_mode", "custom_mode"] = "simple_mode"
    ai_token: str | None = Field(None, exclude=True)


def description_data(desc: Any, *, instrumental: bool | None = None) -> dict[str, Any]:
    """A planner `SongDescription` under upstream's response names."""
    return {
        "caption": desc.caption,
        "lyrics": desc.lyrics,
        "bpm": desc.bpm,
        "key_scale": desc.keyscale or "",
        "time_signature": desc.timesignature or "",
        "duration": desc.duration,
        "vocal_language": desc.language or "unknown",
        "instrumental": bool(desc.instrumental if instrumental is None else instrumental),
    }
