"""Lyric timestamps (LRC, WebVTT) and the DiT lyric-alignment score, as plain functions.

Inputs are the cross-attention probabilities of selected decoder heads, transposed to
[heads, lyric tokens, decoder frames] (the DiT's 12.5 Hz frames: F = ceil(T / 2)). Two separate
pipelines, as upstream (ACE-Step 1.5 `MusicStampsAligner` / `MusicLyricScorer`) runs them:

* Timestamps (`align_tokens`): per head row-softmax × column-softmax; subtract 2 × the row median
  (interpolated, like `torch.quantile(q=0.5)`), ReLU; subtract 2 × the column median, ReLU;
  square; z-score over everything (population std, + 1e-9); median filter (width 1 = none); mean
  over heads. DTW on the negated matrix (float64 input) gives each token's frames; a token starts
  at its first frame and ends at its last, times `duration / F`.
* Score (`score_alignment`): mean of the heads' raw probabilities → median filter → min-max
  normalise (energy; zeros when flat) → calc = energy² → DTW on −calc (float32 input). Coverage =
  share of lyric rows whose peak energy > 0.1; monotonicity = share of consecutive lyric-row
  centroids (frames with energy > 0.01) that move back by at most 9 frames; confidence = mean
  energy along the path; score = round(clip(cov² · mono² · conf, 0, 1), 4). Rows inside `[...]`
  section tags are not lyric rows (tag tokens still count on the path).

Token texts come from a `decode(ids) -> str` callable (the tokenizer's, or bytes joined as UTF-8
with replacement): token i's text is the new bytes of decode(ids[:i+1]) over decode(ids[:i]),
"" when they do not form whole characters. A line ends at a token whose text holds a newline; its
text is the joint decode, stripped; section tags stay in the LRC, as upstream writes them.

Where upstream breaks, this module does the evident thing instead: with a single selected head the
timestamps average over heads (upstream averages over tokens and then fails in DTW).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

# upstream handler's heads for the 2 B models, used when a checkpoint's config names none
DEFAULT_2B_HEADS: dict[int, list[int]] = {2: [6], 3: [10, 11], 4: [3], 5: [8, 9], 6: [8]}
LYRIC_END_ID = 151643  # <|endoftext|> of the Qwen3 tokenizers
VIOLENCE = 2.0  # median-suppression strength of the timestamp aligner
COVERAGE_THRESHOLD = 0.1
CENTROID_THRESHOLD = 0.01
OVERLAP_FRAMES = 9.0

Decode = Callable[[Sequence[int]], str]


# -- heads ------------------------------------------------------------------------------------
def resolve_heads(config_value: Mapping | Sequence | None) -> list[tuple[int, list[int]]]:
    """`lyric_alignment_layers_config` as config.json stores it ({"layer": [heads]}, any key
    order; or (layer, heads) pairs) → [(layer, [heads])] in its own order; None → the 2 B default."""
    if config_value is None:
        return [(k, list(v)) for k, v in DEFAULT_2B_HEADS.items()]
    items = config_value.items() if isinstance(config_value, Mapping) else config_value
    out = []
    for layer, heads in items:
        heads = [heads] if isinstance(heads, int | str) else heads
        out.append((int(layer), [int(h) for h in heads]))
    return out


def select_heads(resolved: Iterable[tuple[int, list[int]]], num_layers: int, num_heads: int) -> list[tuple[int, int]]:
    """The (layer, head) pairs that exist, in config order; others are skipped silently, as
    upstream does (an index is kept when it is below the count; negative ones count from the end)."""
    pairs = []
    for layer, heads in resolved:
        if not -num_layers <= layer < num_layers:
            continue
        for head in heads:
            if -num_heads <= head < num_heads:
                pairs.append((layer % num_layers, head % num_heads))
    return pairs


def stack_heads(maps: Mapping[int, torch.Tensor], pairs: Sequence[tuple[int, int]], rows: slice) -> torch.Tensor:
    """{layer: probabilities [H, F, Lenc]} (one sample) → [S, rows, F] in `pairs` order."""
    return torch.stack([maps[layer][head].transpose(0, 1)[rows] for layer, head in pairs])


def lyric_rows(ids: Sequence[int], header_len: int, end_id: int = LYRIC_END_ID) -> slice:
    """The pure lyric tokens of a lyric prompt's ids: after the `# Languages\\n{lang}\\n\\n# Lyric\\n`
    header (its token count without special tokens) up to the first `end_id`."""
    ids = list(ids)
    end = ids.index(end_id) if end_id in ids else len(ids)
    return slice(header_len, end)


# -- small numeric pieces ---------------------------------------------------------------------
def median_filter(x: torch.Tensor, width: int) -> torch.Tensor:
    """Median over a sliding window of the last axis with reflect padding (width 1 = identity)."""
    pad = width // 2
    if width <= 1 or x.shape[-1] <= pad:
        return x
    shape = x.shape
    y = F.pad(x.reshape(-1, 1, shape[-1]), (pad, pad), mode="reflect")
    return y.unfold(-1, width, 1).sort(dim=-1).values[..., pad].reshape(shape)


def _median(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Interpolated median (`torch.quantile(q=0.5)`) along a negative `dim`, kept, head by head
    (quantile refuses inputs over 2**24 elements; a head of a 10-minute song stays under)."""
    return torch.stack([torch.quantile(h, 0.5, dim=dim, keepdim=True) for h in x])


def dtw(cost: np.ndarray) -> np.ndarray:
    """Minimum-cost monotone path through `cost` [N, M], (row, column) pairs [P, 2] int32 from
    (0, 0) to (N-1, M-1); steps diagonal, next row, or next column.

    Exactly upstream's (Whisper-style) DTW, including its float32 accumulator and tie rule: the
    diagonal wins only when strictly cheaper than both others, then the previous row when strictly
    cheaper than both, else the previous column (ties go to the previous column). The sums are
    taken in the input's dtype and stored as float32. Library DTWs (librosa, dtw-python) break
    ties differently, which moves paths on flat matrices, so this computes the table itself,
    one anti-diagonal at a time."""
    n, m = cost.shape
    table = np.full((n + 1, m + 1), np.inf, dtype=np.float32)
    trace = np.full((n + 1, m + 1), -1, dtype=np.int8)
    table[0, 0] = 0
    for d in range(2, n + m + 1):
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        c0, c1, c2 = table[i - 1, j - 1], table[i - 1, j], table[i, j - 1]
        diag = (c0 < c1) & (c0 < c2)
        up = ~diag & (c1 < c0) & (c1 < c2)
        step = np.where(diag, 0, np.where(up, 1, 2)).astype(np.int8)
        best = np.where(diag, c0, np.where(up, c1, c2))
        table[i, j] = cost[i - 1, j - 1] + best
        trace[i, j] = step
    return _backtrace(trace, n, m)


def _backtrace(trace: np.ndarray, n: int, m: int) -> np.ndarray:
    trace[0, :] = 2
    trace[:, 0] = 1
    path = []
    i, j = n, m
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        t = trace[i, j]
        if t == 0:
            i, j = i - 1, j - 1
        elif t == 1:
            i -= 1
        elif t == 2:
            j -= 1
        else:  # pragma: no cover - every inner cell gets a step
            break
    return np.asarray(path[::-1], dtype=np.int32).reshape(-1, 2)


# -- timestamps -------------------------------------------------------------------------------
def timing_matrices(attn: torch.Tensor, violence: float = VIOLENCE, medfilt_width: int = 1) -> dict[str, torch.Tensor]:
    """The timestamp aligner's matrices from [S, N, F] head maps: `calc` (DTW input), `energy`
    (the suppressed, squared consensus averaged over heads) and `vis` (plain head mean)."""
    w = attn.detach().to("cpu", torch.float32)
    processed = F.softmax(w, dim=-1) * F.softmax(w, dim=-2)
    processed = torch.relu(processed - violence * _median(processed, dim=-1))
    processed = torch.relu(processed - violence * _median(processed, dim=-2))
    processed = processed**2
    std, mean = torch.std_mean(processed, correction=0)
    z = median_filter((processed - mean) / (std + 1e-9), medfilt_width)
    return {"calc": z.mean(dim=0), "energy": processed.mean(dim=0), "vis": w.mean(dim=0)}


@dataclass
class TokenTime:
    token_id: int
    text: str
    start: float  # seconds
    end: float


@dataclass
class LyricLine:
    text: str
    start: float  # seconds, rounded to ms as upstream
    end: float
    token_range: tuple[int, int]  # [first, last + 1) into the token list


def token_times(path: np.ndarray, n_tokens: int, n_frames: int, duration: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-token (start, end) seconds [N] float64: first and last frame of the token's path
    steps × duration / frames (a token off the path inherits the previous end)."""
    spf = duration / n_frames
    starts, ends = np.zeros(n_tokens), np.zeros(n_tokens)
    rows, cols = path[:, 0], path[:, 1]
    prev = 0.0
    for i in range(n_tokens):
        frames = cols[rows == i]
        if frames.size:
            start, end = frames[0] * spf, frames[-1] * spf
        else:
            start = end = prev
        starts[i], ends[i] = start, max(end, start)
        prev = ends[i]
    return starts, ends


def incremental_texts(ids: Sequence[int], decode: Decode) -> list[str]:
    """Each token's own text: the new UTF-8 bytes of decode(ids[:i+1]) over decode(ids[:i]);
    "" when those bytes are not whole characters or the decode got shorter."""
    texts, prev = [], b""
    for i in range(len(ids)):
        cur = decode(list(ids[: i + 1])).encode("utf-8", errors="surrogatepass")
        text = ""
        if len(cur) >= len(prev):
            try:
                text = cur[len(prev) :].decode("utf-8")
            except UnicodeDecodeError:
                text = ""
        texts.append(text)
        prev = cur
    return texts


def lyric_lines(tokens: Sequence[TokenTime], decode: Decode) -> list[LyricLine]:
    """Tokens grouped into lines: a line ends at a token whose text holds a newline (the rest
    after the last one is a final line); text = joint decode, stripped; blank lines dropped."""
    lines, first = [], 0
    for i, tok in enumerate(tokens):
        last = i == len(tokens) - 1
        if "\n" not in tok.text and not last:
            continue
        group = tokens[first : i + 1]
        text = decode([t.token_id for t in group]).strip()
        if text:
            lines.append(LyricLine(text, round(group[0].start, 3), round(group[-1].end, 3), (first, i + 1)))
        first = i + 1
    return lines


def align_tokens(
    attn: torch.Tensor, ids: Sequence[int], duration: float, decode: Decode, medfilt_width: int = 1
) -> tuple[list[TokenTime], dict[str, torch.Tensor], np.ndarray]:
    """[S, N, F] head maps of the N pure lyric tokens `ids` → (token times, matrices, DTW path)."""
    mats = timing_matrices(attn, medfilt_width=medfilt_width)
    path = dtw(-mats["calc"].numpy().astype(np.float64))
    starts, ends = token_times(path, len(ids), attn.shape[-1], duration)
    texts = incremental_texts(ids, decode)
    tokens = [TokenTime(int(t), texts[i], float(starts[i]), float(ends[i])) for i, t in enumerate(ids)]
    return tokens, mats, path


# -- text formats -----------------------------------------------------------------------------
def format_lrc(lines: Sequence[LyricLine]) -> str:
    """`[mm:ss.xx]text` per line (minutes from the ms-rounded start, so 59.997 s → `[00:60.00]`,
    as upstream prints it)."""
    return "\n".join(f"[{int(ln.start // 60):02d}:{ln.start % 60:05.2f}]{ln.text}" for ln in lines)


def _vtt_time(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def format_vtt(lines: Sequence[LyricLine], duration: float) -> str:
    """WebVTT cues, one per line. A cue lasts until its line's end, or longer until the next line
    that starts later (else the end of the song), so every cue has end > start. `&`, `<` and `>`
    are escaped (so a lyric holding `-->` cannot end a cue's text)."""
    cues = ["WEBVTT", ""]
    for i, ln in enumerate(lines):
        later = [x.start for x in lines[i + 1 :] if x.start > ln.start]
        end = max(ln.end, later[0] if later else duration)
        if end <= ln.start:
            end = ln.start + 0.001
        text = ln.text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")  # cue-text escapes
        cues += [str(i + 1), f"{_vtt_time(ln.start)} --> {_vtt_time(end)}", text, ""]
    return "\n".join(cues)


# -- score ------------------------------------------------------------------------------------
def tag_mask(single_texts: Sequence[str]) -> np.ndarray:
    """1 = lyric row, 0 = inside a `[...]` tag (a token holding `[` opens, one holding `]` closes,
    both are tag rows; an unclosed `[` makes every later row a tag row)."""
    mask = np.ones(len(single_texts), dtype=np.int32)
    inside = False
    for i, text in enumerate(single_texts):
        if "[" in text:
            inside = True
        if inside:
            mask[i] = 0
        if "]" in text:
            inside = False
            mask[i] = 0
    return mask


@dataclass
class ScoreParts:
    coverage: float
    monotonicity: float
    confidence: float
    raw: float  # coverage² · monotonicity² · confidence, before clip and rounding
    score: float  # clipped to [0, 1], rounded to 4 decimals
    matrices: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


def score_matrices(attn: torch.Tensor, medfilt_width: int = 1) -> dict[str, np.ndarray]:
    """[S, N, F] head maps → energy (min-max normalised head mean), calc = energy², DTW path."""
    mean = median_filter(attn.detach().to("cpu", torch.float32).mean(dim=0), medfilt_width)
    energy = mean.numpy()
    lo, hi = energy.min(), energy.max()
    energy = (energy - lo) / (hi - lo) if hi - lo > 1e-9 else np.zeros_like(energy)
    calc = energy**2
    return {"energy": energy, "calc": calc, "path": dtw(-calc.astype(np.float32))}


def score_parts(energy: np.ndarray, path: np.ndarray, mask: np.ndarray) -> tuple[float, float, float]:
    """(coverage, monotonicity, confidence) in float64."""
    e = torch.as_tensor(energy, dtype=torch.float32).to(torch.float64)
    lyric = torch.as_tensor(mask, dtype=torch.long) == 1
    sung = lyric.sum().double()
    covered = (lyric & (e.max(dim=1).values > COVERAGE_THRESHOLD)).sum().double()
    coverage = float(covered / sung) if sung > 0 else 1.0
    w = torch.where(e > CENTROID_THRESHOLD, e, torch.zeros_like(e))
    sum_w = w.sum(dim=1)
    sum_t = (w * torch.arange(e.shape[1], dtype=torch.float64)).sum(dim=1)
    centroids = torch.full((e.shape[0],), -1.0, dtype=torch.float64)
    ok = sum_w > 1e-9
    centroids[ok] = sum_t[ok] / sum_w[ok]
    seq = centroids[lyric & (centroids >= 0)]
    if seq.shape[0] > 1:
        monotonicity = float((seq[1:] >= seq[:-1] - OVERLAP_FRAMES).double().sum() / (seq.shape[0] - 1))
    else:
        monotonicity = 1.0
    p = torch.as_tensor(path, dtype=torch.long)
    confidence = float(e[p[:, 0], p[:, 1]].sum() / p.shape[0]) if p.shape[0] else 0.0
    return coverage, monotonicity, confidence


def score_alignment(attn: torch.Tensor, single_texts: Sequence[str], medfilt_width: int = 1) -> ScoreParts:
    """[S, N, F] head maps and each token's single-id text → the alignment score and its parts."""
    mats = score_matrices(attn, medfilt_width)
    mask = tag_mask(single_texts)
    if len(mask) != mats["energy"].shape[0]:
        mask = np.ones(mats["energy"].shape[0], dtype=np.int32)
    mats["type_mask"] = mask
    cov, mono, conf = score_parts(mats["energy"], mats["path"], mask)
    raw = (cov**2) * (mono**2) * conf
    return ScoreParts(cov, mono, conf, raw, round(float(np.clip(raw, 0.0, 1.0)), 4), mats)


__all__ = [
    "DEFAULT_2B_HEADS",
    "LyricLine",
    "ScoreParts",
    "TokenTime",
    "align_tokens",
    "dtw",
    "format_lrc",
    "format_vtt",
    "incremental_texts",
    "lyric_lines",
    "lyric_rows",
    "median_filter",
    "resolve_heads",
    "score_alignment",
    "select_heads",
    "stack_heads",
    "tag_mask",
    "timing_matrices",
    "token_times",
]
