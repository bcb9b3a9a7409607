"""Pure string builders and parsers for the DiT text inputs and the 5 Hz LM planner.

Everything here is text in, text out: the DiT
caption and lyric prompts with their `# Metas` block, the CoT block the LM reads in phase 2,
the LM chat messages (newest layout by default, the legacy layout on request), the parser of
LM output and the REST `sample_query` hints. Rendering a chat prompt is delegated to any
object with a Hugging Face style `apply_chat_template`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import yaml

from songstep.constants import DEFAULT_NEGATIVE_PROMPT, ENDOFTEXT, THINK_END, THINK_START
from songstep.errors import CheckpointError

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Fixed strings
# ---------------------------------------------------------------------------------------------

SFT_GEN_PROMPT = "# Instruction\n{}\n\n# Caption\n{}\n\n# Metas\n{}" + ENDOFTEXT + "\n"
DEFAULT_DIT_INSTRUCTION = "Fill the audio semantic mask based on the given conditions:"
LM_CODES_INSTRUCTION = "Generate audio semantic tokens based on the given conditions:"
LM_UNDERSTAND_INSTRUCTION = (
    "Understand the given musical conditions and describe the audio semantics accordingly:"
)
LM_INSPIRE_INSTRUCTION = "Expand the user's input into a more detailed and specific musical description:"
LM_FORMAT_INSTRUCTION = "Format the user's input into a more detailed and specific musical description:"
NA = "N/A"
DEFAULT_DURATION_TEXT = "30 seconds"
DEFAULT_METAS = f"- bpm: {NA}\n- timesignature: {NA}\n- keyscale: {NA}\n- duration: {DEFAULT_DURATION_TEXT}\n"
EMPTY_COT = f"{THINK_START}\n\n{THINK_END}"  # newest layout, and the serialiser's empty dict
LEGACY_EMPTY_COT = f"{THINK_START}\n{THINK_END}"  # legacy phase-2 unconditional assistant turn
PHASE2_SEPARATOR = "\n\n"  # between `</think>` and the first audio code (newest layout)
INSTRUMENTAL_LYRICS = "[Instrumental]"
IM_END = "<|im_end|>"
COT_KEYS = ("bpm", "caption", "duration", "keyscale", "language", "timesignature")

# ---------------------------------------------------------------------------------------------
# DiT prompts
# ---------------------------------------------------------------------------------------------

_SFT_CAPTION_RE = re.compile(r"#\s*Caption\s*\n(.*?)(?:\n\s*#\s*Metas|$)", re.DOTALL)


def format_instruction(instruction: str | None) -> str:
    """The instruction line of the caption prompt: default when empty, trailing `:` added."""
    text = instruction or DEFAULT_DIT_INSTRUCTION
    return text if text.endswith(":") else text + ":"


def extract_sft_caption(caption: str) -> str:
    """If `caption` already is a full caption prompt (`# Instruction` and `# Caption`), return
    only the text between `# Caption\\n` and `\\n# Metas` (or the end), stripped."""
    if "# Instruction" in caption and "# Caption" in caption:
        match = _SFT_CAPTION_RE.search(caption)
        if match:
            return match.group(1).strip()
    return caption


def _lookup(metas: Mapping[str, Any], keys: Sequence[str]) -> tuple[bool, Any]:
    for key in keys:
        if key in metas:
            return True, metas[key]
    return False, None


def _meta_text(value: Any, *, zero_is_missing: bool = False) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        return NA
    if zero_is_missing and not isinstance(value, bool) and isinstance(value, int | float) and value == 0:
        return NA
    return str(value)


def format_duration_text(value: Any) -> str:
    """`{int(seconds)} seconds` for a positive finite number, a non-blank string unchanged,
    anything else (missing, ≤ 0, NaN) the upstream placeholder `30 seconds`."""
    if isinstance(value, str):
        return value if value.strip() else DEFAULT_DURATION_TEXT
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value) and value > 0:
            return f"{int(value)} seconds"
    return DEFAULT_DURATION_TEXT


def format_metas(metas: Mapping[str, Any] | str | None) -> str:
    """The `# Metas` block: bpm, timesignature, keyscale, duration lines, each ending in `\\n`.

    A string is taken as an already formatted block; None gives the all-`N/A` default. Values
    print as given (`4/4` stays `4/4`); missing/None/blank → `N/A`, bpm 0 → `N/A`.
    """
    if metas is None:
        return DEFAULT_METAS
    if isinstance(metas, str):
        return metas
    bpm = _meta_text(_lookup(metas, ("bpm", "tempo"))[1], zero_is_missing=True)
    timesig = _meta_text(_lookup(metas, ("timesignature", "time_signature"))[1])
    keyscale = _meta_text(_lookup(metas, ("keyscale", "key", "scale"))[1])
    duration = format_duration_text(_lookup(metas, ("duration", "length"))[1])
    return f"- bpm: {bpm}\n- timesignature: {timesig}\n- keyscale: {keyscale}\n- duration: {duration}\n"


def build_dit_caption_prompt(
    instruction: str | None, caption: str, metas: Mapping[str, Any] | str | None
) -> str:
    """`# Instruction\\n{instr}\\n\\n# Caption\\n{caption}\\n\\n# Metas\\n{metas}<|endoftext|>\\n`."""
    return SFT_GEN_PROMPT.format(
        format_instruction(instruction), extract_sft_caption(caption or ""), format_metas(metas)
    )


def build_dit_lyrics_prompt(lyrics: str, language: str) -> str:
    """`# Languages\\n{language}\\n\\n# Lyric\\n{lyrics}<|endoftext|>` (no newline before EOT)."""
    return f"# Languages\n{language}\n\n# Lyric\n{lyrics or ''}{ENDOFTEXT}"


def build_dit_inputs(
    instruction: str | None,
    caption: str,
    lyrics: str,
    metas: Mapping[str, Any] | str | None,
    language: str,
) -> tuple[str, str]:
    """(caption prompt, lyrics prompt); a non-empty `caption` / `language` inside a metas dict
    replaces the given one (upstream `build_dit_inputs`)."""
    if isinstance(metas, Mapping):
        if metas.get("caption"):
            caption = str(metas["caption"])
        if metas.get("language"):
            language = str(metas["language"])
    return build_dit_caption_prompt(instruction, caption, metas), build_dit_lyrics_prompt(lyrics, language)


def _positive_number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def build_metas_dict(
    bpm: Any, keyscale: str | None, timesignature: str | None, duration: Any = None
) -> dict[str, Any]:
    """The user's metadata dict for the DiT (upstream `_build_metadata_dict`): falsy bpm,
    blank keyscale/timesignature → `N/A`; duration only when > 0, as `{int(d)} seconds`."""
    ts = (timesignature or "").strip()
    out: dict[str, Any] = {
        "bpm": bpm if bpm else NA,
        "keyscale": keyscale if (keyscale or "").strip() else NA,
        "timesignature": timesignature if ts and ts != NA else NA,
    }
    seconds = _positive_number(duration)
    if seconds is not None:
        out["duration"] = f"{int(seconds)} seconds"
    return out


def merge_lm_metas(metas: Mapping[str, Any], lm_metas: Mapping[str, Any] | None) -> dict[str, Any]:
    """The dict handed to the DiT prompt builder: the user's fields, blanks (`N/A`/missing)
    filled from the LM's CoT, plus the LM's `caption` and `language` (None when absent)."""
    out = dict(metas)
    if not lm_metas:
        return out
    for key in ("bpm", "keyscale", "timesignature", "duration"):
        if out.get(key) in (None, "", NA) and lm_metas.get(key) not in (None, ""):
            out[key] = lm_metas[key]
    out["caption"] = lm_metas.get("caption")
    out["language"] = lm_metas.get("language")
    return out


# ---------------------------------------------------------------------------------------------
# CoT block
# ---------------------------------------------------------------------------------------------


def user_cot_metadata(bpm: Any, keyscale: str | None, timesignature: str | None, duration: Any) -> dict:
    """The user's metas as the LM sees them: bpm when not None (0 is kept), keyscale and
    timesignature when non-blank, duration as `int(d)` when > 0."""
    out: dict[str, Any] = {}
    if bpm is not None:
        out["bpm"] = bpm
    if keyscale and keyscale.strip():
        out["keyscale"] = keyscale
    if timesignature and timesignature.strip():
        out["timesignature"] = timesignature
    seconds = _positive_number(duration)
    if seconds is not None:
        out["duration"] = int(seconds)
    return out


def _cot_value(key: str, value: Any) -> Any:
    if key == "timesignature" and isinstance(value, str) and value.endswith("/4"):
        value = value.split("/")[0]
    if isinstance(value, str) and value.isdigit():
        try:
            return int(value)
        except ValueError:  # e.g. superscript digits: isdigit() but not int()-parsable
            return value
    return value


def cot_items(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """The CoT fields of `metadata`: non-None among COT_KEYS, `N/4` → `N`, digit strings → int."""
    if not metadata:
        return {}
    return {k: _cot_value(k, metadata[k]) for k in COT_KEYS if metadata.get(k) is not None}


def format_cot(metadata: Mapping[str, Any] | None) -> str:
    """`<think>\\n{yaml}\\n</think>` re-serialised with PyYAML (sorted keys, unicode kept,
    width-80 folding, YAML quoting); an empty dict gives `<think>\\n\\n</think>`."""
    items = cot_items(metadata)
    body = yaml.dump(items, allow_unicode=True, sort_keys=True).strip() if items else ""
    return f"{THINK_START}\n{body}\n{THINK_END}"


# ---------------------------------------------------------------------------------------------
# LM chat prompts
# ---------------------------------------------------------------------------------------------


class ChatTemplater(Protocol):
    """Anything with a Hugging Face style chat template (a tokenizer, or a test stub)."""

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class ChatPrompt:
    """Messages for `apply_chat_template` plus the text appended after rendering.

    `assistant_prefix` is non-empty only in the newest phase-2 layout (CoT + `\\n\\n` inside the
    still-open assistant turn).
    """

    messages: tuple[tuple[str, str], ...]
    add_generation_prompt: bool = True
    assistant_prefix: str = ""

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]

    def to_dict(self) -> dict[str, Any]:
        """`{"messages": [...], "add_generation_prompt": bool}` (+ `assistant_prefix` if set)."""
        out: dict[str, Any] = {
            "messages": self.message_dicts(),
            "add_generation_prompt": self.add_generation_prompt,
        }
        if self.assistant_prefix:
            out["assistant_prefix"] = self.assistant_prefix
        return out


def system_content(instruction: str) -> str:
    return f"# Instruction\n{instruction}\n\n"


def lm_user_content(caption: str, lyrics: str) -> str:
    """`# Caption\\n{caption}\\n\\n# Lyric\\n{lyrics}\\n` (empty lyrics stay empty)."""
    return f"# Caption\n{caption}\n\n# Lyric\n{lyrics}\n"


def has_meaningful_negative_prompt(negative_prompt: str | None) -> bool:
    """True for a non-blank negative prompt other than the default `NO USER INPUT`."""
    text = (negative_prompt or "").strip()
    return bool(text) and text != DEFAULT_NEGATIVE_PROMPT


def _chat(instruction: str, user: str, **kwargs: Any) -> ChatPrompt:
    return ChatPrompt((("system", system_content(instruction)), ("user", user)), **kwargs)


def build_phase1_prompt(
    caption: str,
    lyrics: str,
    *,
    unconditional: bool = False,
    negative_prompt: str | None = DEFAULT_NEGATIVE_PROMPT,
) -> ChatPrompt:
    """Phase 1 (CoT). Unconditional: `# Lyric\\n{lyrics}\\n`, or the caption slot holding a
    non-default negative prompt."""
    if not unconditional:
        user = lm_user_content(caption, lyrics)
    elif has_meaningful_negative_prompt(negative_prompt):
        user = lm_user_content(str(negative_prompt), lyrics)
    else:
        user = f"# Lyric\n{lyrics}\n"
    return _chat(LM_CODES_INSTRUCTION, user)


def build_phase2_prompt(
    caption: str,
    lyrics: str,
    cot_text: str,
    *,
    unconditional: bool = False,
    negative_prompt: str | None = DEFAULT_NEGATIVE_PROMPT,
    legacy: bool = False,
) -> ChatPrompt:
    """Phase 2 (codes).

    Newest (default): assistant turn left open, `assistant_prefix` = CoT + `\\n\\n`; the
    unconditional user turn is the raw negative prompt (`NO USER INPUT` by default) with
    CoT `<think>\\n\\n</think>`.
    Legacy: CoT as an assistant message rendered with `add_generation_prompt=False`; the
    unconditional CoT is `<think>\\n</think>` and its caption slot holds the user's caption,
    or the negative prompt when that is not the default.
    """
    meaningful = has_meaningful_negative_prompt(negative_prompt)
    if legacy:
        slot = str(negative_prompt) if (unconditional and meaningful) else caption
        cot = LEGACY_EMPTY_COT if unconditional else cot_text
        messages = (
            ("system", system_content(LM_CODES_INSTRUCTION)),
            ("user", lm_user_content(slot, lyrics)),
            ("assistant", cot),
        )
        return ChatPrompt(messages, add_generation_prompt=False)
    if unconditional:
        user = str(negative_prompt) if meaningful else DEFAULT_NEGATIVE_PROMPT
        return _chat(LM_CODES_INSTRUCTION, user, assistant_prefix=EMPTY_COT + PHASE2_SEPARATOR)
    return _chat(
        LM_CODES_INSTRUCTION, lm_user_content(caption, lyrics), assistant_prefix=cot_text + PHASE2_SEPARATOR
    )


def build_inspiration_prompt(query: str | None, instrumental: bool) -> ChatPrompt:
    """Simple mode: `{query}\\n\\ninstrumental: {true|false}`; blank query → `NO USER INPUT`."""
    text = query if query and query.strip() else DEFAULT_NEGATIVE_PROMPT
    flag = "true" if instrumental else "false"
    return _chat(LM_INSPIRE_INSTRUCTION, f"{text}\n\ninstrumental: {flag}")


def build_format_prompt(caption: str | None, lyrics: str | None) -> ChatPrompt:
    """Format mode: `# Caption\\n{caption}\\n\\n# Lyric\\n{lyrics}` (no trailing newline);
    blank caption → `NO USER INPUT`, blank lyrics → `[Instrumental]`."""
    cap = caption if caption and caption.strip() else DEFAULT_NEGATIVE_PROMPT
    lyr = lyrics if lyrics and lyrics.strip() else INSTRUMENTAL_LYRICS
    return _chat(LM_FORMAT_INSTRUCTION, f"# Caption\n{cap}\n\n# Lyric\n{lyr}")


def build_understand_prompt(audio_codes: str | None) -> ChatPrompt:
    """Understand mode: the code tokens as the user turn (blank → `NO USER INPUT`)."""
    codes = audio_codes if audio_codes and audio_codes.strip() else DEFAULT_NEGATIVE_PROMPT
    return _chat(LM_UNDERSTAND_INSTRUCTION, codes)


def render_chat_prompt(templater: ChatTemplater, prompt: ChatPrompt) -> str:
    """Render with the tokenizer's chat template, then append `assistant_prefix`.

    A prompt rendered without the generation prompt (legacy phase 2) gets a trailing `\\n`
    when the template does not end with one, as upstream did.
    """
    apply = getattr(templater, "apply_chat_template", None)
    if not callable(apply):
        raise CheckpointError(f"{type(templater).__name__} has no apply_chat_template")
    text = apply(prompt.message_dicts(), tokenize=False, add_generation_prompt=prompt.add_generation_prompt)
    if not isinstance(text, str):
        raise CheckpointError(f"chat template returned {type(text).__name__}, expected str")
    if not prompt.add_generation_prompt and not text.endswith("\n"):
        text += "\n"
    return text + prompt.assistant_prefix


def phase2_prompt_from_phase1(rendered_phase1: str, cot_text: str) -> str:
    """Newest-layout phase-2 prompt from the rendered phase-1 conditional prompt (same
    messages, assistant turn open): `{rendered}{cot}\\n\\n`."""
    return rendered_phase1 + cot_text + PHASE2_SEPARATOR


# ---------------------------------------------------------------------------------------------
# LM output parsing
# ---------------------------------------------------------------------------------------------

_CODE_RE = re.compile(r"<\|audio_code_(\d+)\|>")
_REASONING_RES = (
    re.compile(r"<think>(.*?)</think>", re.DOTALL),
    re.compile(r"<reasoning>(.*?)</reasoning>", re.DOTALL),
)
_LYRIC_HEADER_RE = re.compile(r"^#\s*Lyri[c|cs]?\s*\n", re.IGNORECASE)  # upstream's quirk, kept
_TRAILING_IM_END_RE = re.compile(r"<\|im_end\|>\s*$")
_INT_FIELDS = ("bpm", "duration")
_STRING_FIELDS = ("genres", "keyscale", "language", "timesignature")


@dataclass(frozen=True)
class LMOutput:
    """What one LM completion says. Absent fields are None; bpm/duration are int when the
    text was an integer, else the stripped string (upstream keeps them as strings)."""

    audio_codes: str = ""
    bpm: int | str | None = None
    caption: str | None = None
    duration: int | str | None = None
    genres: str | None = None
    keyscale: str | None = None
    language: str | None = None
    timesignature: str | None = None
    lyrics: str = ""

    @property
    def code_ids(self) -> tuple[int, ...]:
        return audio_code_ids(self.audio_codes)

    def metadata(self) -> dict[str, Any]:
        """The present metadata fields (upstream's dict; feed it to `format_cot`)."""
        names = ("bpm", "caption", "duration", "genres", "keyscale", "language", "timesignature")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


def extract_audio_codes(text: str) -> str:
    """All `<|audio_code_N|>` substrings, concatenated in order."""
    return "".join(m.group(0) for m in _CODE_RE.finditer(text or ""))


def audio_code_ids(codes: str) -> tuple[int, ...]:
    return tuple(int(m.group(1)) for m in _CODE_RE.finditer(codes or ""))


def extract_lyrics(text: str) -> str:
    """Text after the first `</think>`, stripped, minus a leading `# Lyric` header (upstream's
    regex `^#\\s*Lyri[c|cs]?\\s*\\n`: `# Lyrics\\n` keeps its line) and a trailing `<|im_end|>`."""
    text = text or ""
    pos = text.find(THINK_END)
    if pos < 0:
        return ""
    after = text[pos + len(THINK_END) :].strip()
    if not after:
        return ""
    after = _LYRIC_HEADER_RE.sub("", after, count=1)
    after = _TRAILING_IM_END_RE.sub("", after, count=1)
    return after.strip()


def _reasoning_text(text: str) -> str:
    for pattern in _REASONING_RES:
        match = pattern.search(text)
        if match:  # the first tag pair found is used; an empty one falls through below
            if match.group(1).strip():
                return match.group(1).strip()
            break
    return text.split("<|audio_code_")[0].strip()


def _field_value(key: str, lines: list[str]) -> Any:
    value = "\n".join(lines)
    if key in _INT_FIELDS:
        try:
            return int(value.strip())
        except ValueError:
            return value.strip()
    if key == "caption":
        return " ".join(s for s in (line.strip() for line in lines) if s)
    return value.strip()


def parse_metadata_block(reasoning: str) -> dict[str, Any]:
    """Line-based YAML-ish parsing: an unindented line with `:` starts a key (lower-cased),
    indented lines continue it, lines starting with `<` are skipped, unknown keys dropped."""
    fields: dict[str, Any] = {}
    key: str | None = None
    lines: list[str] = []

    def flush() -> None:
        if key in COT_KEYS + ("genres",) and lines:
            fields[key] = _field_value(key, lines)

    for line in reasoning.split("\n"):
        if line.strip().startswith("<"):
            continue
        if line and not line[0].isspace() and ":" in line:
            flush()
            name, first = line.split(":", 1)
            key, lines = name.strip().lower(), ([first] if first.strip() else [])
        elif key and line.startswith((" ", "\t")):
            lines.append(line)
    flush()
    return fields


def parse_lm_output(text: str | None) -> LMOutput:
    """Parse one LM completion; never raises. Metadata come from `<think>…</think>` when
    present and non-empty, else from everything before the first audio code."""
    text = text if isinstance(text, str) else ""
    fields = parse_metadata_block(_reasoning_text(text))
    known = {k: v for k, v in fields.items() if k in _INT_FIELDS + _STRING_FIELDS + ("caption",)}
    result = LMOutput(audio_codes=extract_audio_codes(text), lyrics=extract_lyrics(text), **known)
    logger.debug("parsed LM output: %d codes, fields %s", len(result.code_ids), sorted(known))
    return result


# ---------------------------------------------------------------------------------------------
# REST `sample_query` hints
# ---------------------------------------------------------------------------------------------

# Order matters: the first entry found in the query wins (upstream's dict order).
LANGUAGE_HINTS: tuple[tuple[str, str], ...] = (
    ("english", "en"), ("en", "en"),
    ("chinese", "zh"), ("中文", "zh"), ("zh", "zh"), ("mandarin", "zh"),
    ("japanese", "ja"), ("日本語", "ja"), ("ja", "ja"),
    ("korean", "ko"), ("한국어", "ko"), ("ko", "ko"),
    ("spanish", "es"), ("español", "es"), ("es", "es"),
    ("french", "fr"), ("français", "fr"), ("fr", "fr"),
    ("german", "de"), ("deutsch", "de"), ("de", "de"),
    ("italian", "it"), ("italiano", "it"), ("it", "it"),
    ("portuguese", "pt"), ("português", "pt"), ("pt", "pt"),
    ("russian", "ru"), ("русский", "ru"), ("ru", "ru"),
    ("bengali", "bn"), ("bn", "bn"),
    ("hindi", "hi"), ("hi", "hi"),
    ("arabic", "ar"), ("ar", "ar"),
    ("thai", "th"), ("th", "th"),
    ("vietnamese", "vi"), ("vi", "vi"),
    ("indonesian", "id"), ("id", "id"),
    ("turkish", "tr"), ("tr", "tr"),
    ("dutch", "nl"), ("nl", "nl"),
    ("polish", "pl"), ("pl", "pl"),
)  # fmt: skip


def _hint_pattern(name: str) -> re.Pattern[str]:
    if len(name) <= 2:  # short names (codes, and 中文): bounded by whitespace or .,;:!?
        return re.compile(r"(?:^|\s|[.,;:!?])" + re.escape(name) + r"(?:$|\s|[.,;:!?])")
    return re.compile(r"\b" + re.escape(name) + r"\b")


_LANGUAGE_HINT_RES = tuple((_hint_pattern(name), code) for name, code in LANGUAGE_HINTS)


def detect_language_hint(query: str | None) -> str | None:
    """The language code named in a free-text query (English or native name, or a 2-letter
    code bounded by whitespace/punctuation); None when none is found."""
    if not query:
        return None
    lowered = query.lower().strip()
    for pattern, code in _LANGUAGE_HINT_RES:
        if pattern.search(lowered):
            return code
    return None


def detect_instrumental_hint(query: str | None) -> bool:
    """True when the query says instrumental: `instrumental`, `pure music`, `pure instrument`,
    or a trailing ` solo` (or exactly `solo`)."""
    if not query:
        return False
    lowered = query.lower().strip()
    if "instrumental" in lowered or "pure music" in lowered or "pure instrument" in lowered:
        return True
    return lowered.endswith(" solo") or lowered == "solo"


def parse_sample_query(query: str | None) -> tuple[str | None, bool]:
    """(language code or None, instrumental) hinted by a REST `sample_query`."""
    return detect_language_hint(query), detect_instrumental_hint(query)


def resolve_sample_language(request_language: str | None, query_language: str | None) -> str | None:
    """The request's `vocal_language` wins unless it is `en`, `unknown` or empty; then the
    language found in the query (possibly None)."""
    if request_language and request_language not in ("en", "unknown"):
        return request_language
    return query_language
