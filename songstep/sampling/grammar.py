"""Constrained decoding for the 5 Hz planner.

* `MetadataConstraint`: the CoT metadata block as an llguidance Lark grammar (not a hand-written
  state machine). One object per sequence: `allowed()` gives the token mask for the next step,
  `advance(token)` consumes the sampled token.
* `CodeConstraint`: the code phase. Only valid audio-code tokens (codes 0–63 999) and EOS; EOS
  is blocked until exactly `target` codes were emitted, then only EOS is allowed.

Upstream shares ONE processor per batch and advances it with item 0's token only, so the other items are masked by item 0's state. Here every sequence owns its own
constraint object; do not share one between rows.

What the grammar enforces (`MetadataSpec`): `<think>` `\\n`, then the fields in the order bpm,
caption, duration, [genres], keyscale, language, timesignature (caption/language dropped by
their skip flags, genres only when `include_genres`), each as `name: value\\n`:
bpm an integer 30–300, duration an integer 10–`max_duration`, timesignature 2/3/4/6, keyscale one
of the 70 `KEYSCALES`, language one of `LANGUAGES`, caption free text without backticks or
special tokens (audio codes included) of at most `caption_max_tokens` tokens, continuation lines
indented by two spaces (YAML folding). A user value is forced verbatim. Endings: `"eos"` (phase
1, stop at reasoning: EOS right after the timesignature line, no `</think>`), `"think_end"`
(`</think>` then EOS) and `"text"` (understand/simple/format: `</think>` then free text without
special tokens until EOS). Where the grammar forces bytes, only the first canonical token
(llguidance fast-forward tokens) is allowed, like upstream's "longest single-token prefix".

Deviations from upstream's FSM, by design or for lack of data:
* genres: free text up to the newline (at most `genres_max_tokens` tokens); upstream walks a
  trie of `genres_vocab.txt`, which is not available.
* the caption ends when the model samples a newline not followed by the two-space
  indentation; upstream decides on the raw argmax after a newline and then runs unconstrained
  until a `:` (which lets the model skip fields). Here fields are never skipped or reordered.
* language: the first value token (and, if that was a lone space, the next one) is chosen
  greedily among the grammar-allowed tokens (`greedy`), as upstream's top-1 choice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from songstep.constants import (
    CODE_RATE,
    KEYSCALES,
    LANGUAGES,
    MAX_BPM,
    MAX_DURATION,
    MIN_BPM,
    MIN_DURATION,
    THINK_END,
    THINK_START,
)
from songstep.errors import InvalidRequest, SongstepError
from songstep.prompts import cot_items

logger = logging.getLogger(__name__)

FIELD_ORDER = ("bpm", "caption", "duration", "genres", "keyscale", "language", "timesignature")
TIME_SIGNATURE_VALUES = ("2", "3", "4", "6")
CAPTION_MAX_TOKENS = 512
Ending = Literal["eos", "think_end", "text"]


def _bytes_to_unicode() -> dict[str, int]:
    """GPT-2 byte-level alphabet (printable character → byte), as used by Qwen tokenizers."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class _ByteLevelTokens:
    """The token-bytes view llguidance's `TokenizerWrapper` asks for, read from a byte-level BPE
    fast tokenizer. Every added token is flagged special (as `llguidance.hf` does), so text
    terminals never match `<think>` or audio codes."""

    def __init__(self, tokenizer: Any):
        backend = tokenizer.backend_tokenizer
        char_to_byte = _bytes_to_unicode()
        added = backend.get_added_tokens_decoder()
        size = backend.get_vocab_size(with_added_tokens=True)
        tokens = [b""] * size
        for text, tid in backend.get_vocab(with_added_tokens=False).items():
            tokens[tid] = bytes(char_to_byte[c] for c in text)
        for tid, tok in added.items():
            tokens[tid] = tok.content.encode("utf-8")
        self.tokens = tokens
        self.special_token_ids = sorted(added)
        self.eos_token_id = int(tokenizer.eos_token_id)
        self.bos_token_id = None
        self._backend = backend

    def __call__(self, text: str) -> list[int]:
        if isinstance(text, bytes):
            raise TypeError("text only")  # tells TokenizerWrapper to pass str
        return self._backend.encode(text, add_special_tokens=False).ids


def _is_byte_level(tokenizer: Any) -> bool:
    from tokenizers import decoders

    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and isinstance(backend.decoder, decoders.ByteLevel)


@dataclass(frozen=True)
class GrammarVocab:
    """llguidance's view of the LM tokenizer; build once per tokenizer and share it.

    Byte-level BPE tokenizers (Qwen3) are wrapped directly from their vocabulary (~0.2 s);
    `llguidance.hf.from_tokenizer` serialises the tokenizer to JSON and took ~25 s with the
    65 535 added code tokens, so it is only the fallback for other tokenizer types."""

    lltokenizer: Any  # its vocab_size is the tokenizer's; model rows past it are never allowed
    vocab_size: int  # logits width (the model's vocabulary, ≥ tokenizer size)
    eos_id: int
    think_start_id: int
    think_end_id: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, vocab_size: int | None = None) -> GrammarVocab:
        import llguidance
        import llguidance.hf

        size = vocab_size or len(tokenizer)
        if size < len(tokenizer):
            raise SongstepError(f"model vocabulary {size} is smaller than the tokenizer's {len(tokenizer)}")
        if _is_byte_level(tokenizer):
            wrapper = llguidance.TokenizerWrapper(_ByteLevelTokens(tokenizer))
            lltok = llguidance.LLTokenizer(wrapper, n_vocab=size)
        else:
            lltok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=size)
        ids = [tokenizer.convert_tokens_to_ids(t) for t in (THINK_START, THINK_END)]
        if any(i is None or i == tokenizer.unk_token_id for i in ids):
            raise SongstepError("the LM tokenizer lacks <think>/</think> tokens")
        return cls(lltok, size, int(tokenizer.eos_token_id), int(ids[0]), int(ids[1]))


@dataclass(frozen=True)
class MetadataSpec:
    """What the metadata grammar allows (see the module docstring)."""

    user_values: Mapping[str, Any] = field(default_factory=dict)
    skip_caption: bool = False
    skip_language: bool = False
    include_genres: bool = False
    max_duration: int = int(MAX_DURATION)
    ending: Ending = "eos"
    caption_max_tokens: int = CAPTION_MAX_TOKENS
    genres_max_tokens: int = 64
    greedy_language: bool = True

    def fields(self) -> tuple[str, ...]:
        skipped = {
            "caption": self.skip_caption,
            "language": self.skip_language,
            "genres": not self.include_genres,
        }
        return tuple(f for f in FIELD_ORDER if not skipped.get(f, False))

    def forced_values(self) -> dict[str, str]:
        """The user's values as forced text (`N/4` → `N`, integral numbers without `.0`)."""
        raw = {k: v for k, v in self.user_values.items() if v is not None and k in FIELD_ORDER}
        items = {**raw, **cot_items(raw)}
        out = {}
        for key, value in items.items():
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            text = str(value).strip()
            if not text or "\n" in text or "`" in text:
                raise InvalidRequest(f"user value for {key!r} must be one non-empty line: {value!r}")
            out[key] = text
        return out


def _lark_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _alternatives(values) -> str:
    return " | ".join(_lark_string(v) for v in values)


def _value_terminals(spec: MetadataSpec) -> dict[str, str]:
    if spec.max_duration < MIN_DURATION:
        raise InvalidRequest(f"max_duration {spec.max_duration} is below {MIN_DURATION:g}")
    return {
        "BPM": _alternatives(str(v) for v in range(MIN_BPM, MAX_BPM + 1)),
        "DURATION": _alternatives(str(v) for v in range(int(MIN_DURATION), int(spec.max_duration) + 1)),
        "KEYSCALE": _alternatives(KEYSCALES),
        "LANGUAGE": _alternatives(LANGUAGES),
        "TIMESIG": _alternatives(TIME_SIGNATURE_VALUES),
        "CAPTION": r"/ [^`\n]*[^\s`][^`\n]*(\n  [^`\n]*[^\s`][^`\n]*)*/",
        "GENRES": r"/[^`\n]*/",
    }


def metadata_lark(spec: MetadataSpec, think_start_id: int, think_end_id: int) -> str:
    """The Lark grammar (llguidance dialect) of one metadata block."""
    forced = spec.forced_values()
    value_rule = {
        "bpm": '" " BPM',
        "duration": '" " DURATION',
        "keyscale": '" " KEYSCALE',
        "language": '" " LANGUAGE',
        "timesignature": '" " TIMESIG',
        "caption": "caption_value",
        "genres": "genres_value",
    }
    parts, rules = [], []
    for name in spec.fields():
        rule = f"field_{name}"
        parts.append(rule)
        if name in forced:
            rules.append(f'{rule}: {_lark_string(f"{name}: {forced[name]}")} "\\n"')
        else:
            rules.append(f'{rule}: "{name}:" {value_rule[name]} "\\n"')
    ending = {"eos": "", "think_end": f" <[{think_end_id}]>", "text": f" <[{think_end_id}]> FREE_TEXT"}[
        spec.ending
    ]
    lines = [f'start: <[{think_start_id}]> "\\n" {" ".join(parts)}{ending}', *rules]
    lines.append(f"caption_value[max_tokens={spec.caption_max_tokens}]: CAPTION")
    lines.append(f"genres_value[max_tokens={spec.genres_max_tokens}]: GENRES")
    lines += [f"{name}: {body}" for name, body in _value_terminals(spec).items()]
    lines.append(r"FREE_TEXT: /(?s:.*)/")
    return "\n".join(lines) + "\n"


def bitmask_to_bool(bitmask: np.ndarray, size: int) -> torch.Tensor:
    """llguidance's packed int32 mask (bit j of word w = token 32·w + j) → bool tensor [size];
    ids past the mask (model rows beyond the tokenizer) are False."""
    bits = np.unpackbits(bitmask.view(np.uint8), bitorder="little")[:size].astype(bool)
    if bits.size < size:
        bits = np.concatenate([bits, np.zeros(size - bits.size, dtype=bool)])
    return torch.from_numpy(bits)


class MetadataConstraint:
    """Grammar state of ONE sequence's metadata block (one object per row; see module doc)."""

    def __init__(self, vocab: GrammarVocab, spec: MetadataSpec | None = None):
        import llguidance

        self.vocab = vocab
        self.spec = spec or MetadataSpec()
        grammar = llguidance.LLMatcher.grammar_from_lark(
            metadata_lark(self.spec, vocab.think_start_id, vocab.think_end_id)
        )
        self._matcher = llguidance.LLMatcher(vocab.lltokenizer, grammar, log_level=0)
        if self._matcher.is_error():
            raise SongstepError(f"metadata grammar rejected: {self._matcher.get_error()}")
        self._bitmask = np.full(((vocab.lltokenizer.vocab_size + 31) // 32,), -1, dtype=np.int32)
        self._text = bytearray()
        self._greedy_forced = self.spec.greedy_language and "language" not in self.spec.forced_values()
        self.tokens: list[int] = []

    @property
    def finished(self) -> bool:
        """True once EOS was consumed (or the matcher cannot continue)."""
        return self._matcher.is_stopped()

    @property
    def greedy(self) -> bool:
        """Whether the next token should be the argmax (first language value token)."""
        if not self._greedy_forced:
            return False
        return self._text.endswith(b"\nlanguage:") or self._text.endswith(b"\nlanguage: ")

    def allowed(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Bool mask [vocab_size] of the tokens the grammar allows next."""
        forced = self._matcher.compute_ff_tokens()
        if forced:
            mask = torch.zeros(self.vocab.vocab_size, dtype=torch.bool)
            mask[forced[0]] = True
        else:
            self._matcher.unsafe_compute_mask_ptr(self._bitmask.ctypes.data, self._bitmask.nbytes)
            mask = bitmask_to_bool(self._bitmask, self.vocab.vocab_size)
        if self._matcher.is_error():
            raise SongstepError(f"metadata grammar failed: {self._matcher.get_error()}")
        return mask.to(device)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` [vocab] with every disallowed token set to -inf (a new tensor)."""
        return logits.masked_fill(~self.allowed(logits.device), float("-inf"))

    def advance(self, token_id: int) -> None:
        if not self._matcher.consume_token(int(token_id)):
            raise SongstepError(
                f"token {token_id} violates the metadata grammar: {self._matcher.get_error()}"
            )
        self.tokens.append(int(token_id))
        if token_id != self.vocab.eos_id:
            self._text += self.vocab.lltokenizer.decode_bytes([int(token_id)])

    def text(self) -> str:
        """Decoded text generated so far (special tokens included)."""
        return self._text.decode("utf-8", errors="replace")


def target_codes(duration: float | None) -> int | None:
    """`int(duration × 5)` codes for the user's requested duration."""
    if duration is None or duration <= 0:
        return None
    return int(duration * CODE_RATE)


def code_token_cap(
    duration: float | None, max_duration: float = MAX_DURATION, max_model_len: int = 4096
) -> int:
    """New-token cap of the code phase: `int(clamp(d, 10, max)·5) + 10`, at most
    `max_model_len − 64`; without a duration only the latter."""
    limit = max_model_len - 64
    if duration is None or duration <= 0:
        return limit
    return min(int(min(max(duration, MIN_DURATION), max_duration) * CODE_RATE) + 10, limit)


class CodeConstraint:
    """Code phase of ONE sequence: valid code tokens and EOS only; EOS blocked until `target`
    codes, then only EOS (`target=None`: codes or EOS freely).

    `code_ids` is the (consecutive) range of valid code token ids. Logits columns are token ids
    by default; pass `columns` (token id per column, e.g. `head_columns(codes.head_rows())`)
    when the LM head is restricted."""

    def __init__(
        self,
        code_ids: range,
        eos_id: int,
        target: int | None,
        *,
        columns: torch.Tensor | None = None,
        vocab_size: int | None = None,
    ):
        if target is not None and target < 0:
            raise InvalidRequest(f"code target must be ≥ 0, got {target}")
        if columns is None:
            columns = torch.arange(vocab_size if vocab_size is not None else max(code_ids.stop, eos_id + 1))
        cols = columns.cpu()
        self._is_code = (cols >= code_ids.start) & (cols < code_ids.stop)
        self._is_eos = cols == eos_id
        self._both = self._is_code | self._is_eos
        self._on: dict[torch.device, tuple[torch.Tensor, ...]] = {}
        self.code_ids, self.eos_id, self.target = code_ids, eos_id, target
        self.count = 0
        self.finished = False
        self.greedy = False

    def allowed(self, device: torch.device | str = "cpu") -> torch.Tensor:
        dev = torch.device(device)
        if dev not in self._on:
            self._on[dev] = tuple(t.to(dev) for t in (self._is_code, self._is_eos, self._both))
        codes, eos, both = self._on[dev]
        if self.target is None:
            return both
        return codes if self.count < self.target else eos

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.masked_fill(~self.allowed(logits.device), float("-inf"))

    def schedule(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, int | None]:
        """The whole future of `allowed` from the current state, for decoding without a host
        round trip per token: (mask while codes are due, mask after them, codes still due or
        None). Step k from now allows `before` if k < due else `after`."""
        dev = torch.device(device)
        self.allowed(dev)  # fills the per-device cache
        codes, eos, both = self._on[dev]
        if self.target is None:
            return both, both, None
        return codes, eos, max(self.target - self.count, 0)

    def advance(self, token_id: int) -> None:
        if token_id == self.eos_id:
            if self.target is not None and self.count < self.target:
                raise SongstepError(f"EOS after {self.count} of {self.target} codes")
            self.finished = True
        elif token_id in self.code_ids:
            if self.target is not None and self.count >= self.target:
                raise SongstepError(f"code token after the target of {self.target} codes")
            self.count += 1
        else:
            raise SongstepError(f"token {token_id} is neither a valid audio code nor EOS")
