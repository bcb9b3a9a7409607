"""What the planner takes and returns: options, plans, song descriptions, scores (plain data)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from songstep.constants import (
    CODE_RATE,
    DEFAULT_NEGATIVE_PROMPT,
    KEYSCALES,
    LANGUAGES,
    MAX_BPM,
    MAX_DURATION,
    MIN_BPM,
    MIN_DURATION,
    TIME_SIGNATURES,
)
from songstep.errors import InvalidRequest
from songstep.prompts import LMOutput, audio_code_ids
from songstep.request import GenerationRequest, normalize_timesignature

if TYPE_CHECKING:
    from collections.abc import Sequence

    from songstep.models.lm import PlannerLM
    from songstep.prompts import ChatPrompt
    from songstep.sampling.grammar import MetadataSpec

UNKNOWN_LANGUAGE = "unknown"


@dataclass(frozen=True)
class PlanOptions:
    """How `Planner.plan` runs (defaults: upstream's Python API).

    * `use_cot_metas`: run phase 1 (CoT) when bpm/keyscale/timesignature/duration are not all
      given. `use_cot_caption` / `use_cot_language`: let the CoT write a caption / a language
      (the caption then replaces the DiT caption, upstream's "CaptionRewrite").
    * `cfg_scale` applies to phase 2 (codes) only; phase 1 always runs at scale 1 (newest
      upstream: CFG on text truncated captions).
    * `constrained`: the metadata grammar (needs the `grammar` extra, llguidance; without it the
      planner falls back to unconstrained decoding with a warning). The code phase is always
      restricted to valid codes + EOS.
    * `propagate_language`: when the request's language is `unknown`, the DiT lyric header gets
      the CoT language. Upstream never propagates it (pitfall 6, a key mismatch); set False to
      reproduce that.
    * `enforce_cot_duration`: without a user duration, phase 2 emits exactly `int(cot_duration·5)`
      codes (upstream leaves the count free until EOS; the DiT length follows the codes, so the
      song would not match the CoT's duration line).
    * `max_duration`: longest duration the CoT may choose (the GPU tier's `max_duration_lm`);
      None → the planner's own limit.
    """

    use_cot_metas: bool = True
    use_cot_caption: bool = True
    use_cot_language: bool = True
    cfg_scale: float = 2.0
    temperature: float = 0.85
    top_p: float = 0.9
    top_k: int = 0
    repetition_penalty: float = 1.0
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    legacy_prompts: bool = False
    constrained: bool = True
    propagate_language: bool = True
    enforce_cot_duration: bool = True
    max_duration: float | None = None
    max_new_tokens: int | None = None  # cap on the free-text phases (None: the planner's own)

    def replace(self, **changes: Any) -> PlanOptions:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise InvalidRequest(f"unknown planner option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Plan:
    """One planned take.

    `request` is the user's request with only its blank fields filled (bpm, keyscale,
    timesignature, duration; language when propagated; the caption when the CoT rewrote it) and,
    after phase 2, `audio_codes` set; `batch` is 1 and `seed` this take's seed. `metadata` is the
    CoT the codes were conditioned on (user values win), `lm_metadata` what phase 1 itself wrote.
    """

    request: GenerationRequest
    seed: int
    metadata: dict[str, Any]
    lm_metadata: dict[str, Any] = field(default_factory=dict)
    audio_codes: str = ""
    cot_text: str = ""
    text: str = ""  # raw LM output: phase-1 text, then the phase-2 codes

    @property
    def code_count(self) -> int:
        return len(audio_code_ids(self.audio_codes))

    @property
    def codes_duration(self) -> float | None:
        """Seconds the audio codes imply (one code per 1/5 s); None without codes."""
        count = self.code_count
        return count / CODE_RATE if count else None

    def to_dict(self) -> dict[str, Any]:
        """The plan as `songstep plan` prints it; `duration` is the request's, else the codes'."""
        r = self.request
        implied = self.codes_duration
        return {
            "seed": self.seed,
            "caption": r.caption,
            "lyrics": r.lyrics,
            "instrumental": r.instrumental,
            "bpm": r.bpm,
            "keyscale": r.keyscale,
            "timesignature": r.timesignature,
            "duration": r.duration if r.duration is not None else implied,
            "language": r.language,
            "metadata": dict(self.metadata),
            "code_count": self.code_count,
            "codes_duration": implied,
            "audio_codes": self.audio_codes,
        }


@dataclass(frozen=True)
class SongDescription:
    """What simple mode (`create_sample`), `format` and `understand` return."""

    caption: str = ""
    lyrics: str = ""
    bpm: int | None = None
    duration: int | None = None
    keyscale: str | None = None
    timesignature: str | None = None
    language: str | None = None
    genres: str | None = None
    instrumental: bool = False
    text: str = ""  # raw LM output

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("text")
        return out

    def to_request(self, **changes: Any) -> GenerationRequest:
        """A text2music request from this description (blank metas stay None)."""
        language = self.language if self.language in LANGUAGES else UNKNOWN_LANGUAGE
        fields = dict(
            caption=self.caption,
            lyrics=self.lyrics,
            instrumental=self.instrumental,
            language=language,
            duration=float(self.duration) if self.duration is not None else None,
            bpm=self.bpm,
            keyscale=self.keyscale,
            timesignature=self.timesignature,
        )
        return GenerationRequest(**{**fields, **changes})


@dataclass(frozen=True)
class Score:
    """AutoScore of one take: per-condition scores in [0, 1] (metadata fields: top-k
    recall; caption and lyrics: sigmoid(PMI / scale)), the raw PMIs, and the weighted total."""

    fields: dict[str, float]
    pmi: dict[str, float]
    total: float


# -- validated values ------------------------------------------------------------------------


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def valid_bpm(value: Any) -> int | None:
    number = _as_int(value)
    return number if number is not None and MIN_BPM <= number <= MAX_BPM else None


def valid_duration(value: Any, max_duration: float = MAX_DURATION) -> int | None:
    number = _as_int(value)
    return number if number is not None and MIN_DURATION <= number <= max_duration else None


def valid_keyscale(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text if text in KEYSCALES else None


def valid_timesignature(value: Any) -> str | None:
    try:
        text = normalize_timesignature(value) if value is not None else ""
    except ValueError:
        return None
    return text if text in TIME_SIGNATURES else None


def valid_language(value: Any) -> str | None:
    text = str(value).strip().strip("'\"") if value is not None else ""
    return text if text in LANGUAGES else None


def valid_text(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def describe(out: LMOutput, text: str, *, instrumental: bool = False, lyrics: str = "") -> SongDescription:
    """A `SongDescription` from parsed LM output; values outside the allowed sets become None.
    `lyrics` is the fallback when the LM wrote none (`[Instrumental]` for instrumental songs)."""
    fallback = lyrics or ("[Instrumental]" if instrumental else "")
    return SongDescription(
        caption=valid_text(out.caption) or "",
        lyrics=out.lyrics or fallback,
        bpm=valid_bpm(out.bpm),
        duration=valid_duration(out.duration),
        keyscale=valid_keyscale(out.keyscale),
        timesignature=valid_timesignature(out.timesignature),
        language=valid_language(out.language),
        genres=valid_text(out.genres),
        instrumental=instrumental,
        text=text,
    )


class PlannerHost(Protocol):
    """What the phase functions (`songstep.planner.phases`) and AutoScore
    (`songstep.planner.scoring`) use of a `songstep.planner.Planner`. Declared here so that those
    modules depend on this interface, not on `planner.core`, which imports them (no cycle)."""

    lm: PlannerLM
    caption_max_tokens: int

    def encode_prompt(self, prompt: ChatPrompt) -> list[int]: ...

    def decode_text(self, tokens: Sequence[int]) -> str: ...

    def max_duration_for(self, opts: PlanOptions) -> float: ...

    def cot_token_cap(self, constrained: bool) -> int: ...

    def code_token_cap(self, target: int | None, opts: PlanOptions) -> int: ...

    def metadata_constraint(self, spec: MetadataSpec, constrained: bool = True) -> Any: ...
