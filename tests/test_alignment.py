"""The aligner's and scorer's pieces against independent small implementations."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from songstep import alignment
from songstep.testing.tiny import tiny_dit


def _dtw_loops(x: np.ndarray) -> list[tuple[int, int]]:
    """The textbook double loop (frames outer, tokens inner) with the same tie rule."""
    n, m = x.shape
    cost = np.full((n + 1, m + 1), np.inf, dtype=np.float32)
    trace = -np.ones((n + 1, m + 1))
    cost[0, 0] = 0
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
            if c0 < c1 and c0 < c2:
                c, t = c0, 0
            elif c1 < c0 and c1 < c2:
                c, t = c1, 1
            else:
                c, t = c2, 2
            cost[i, j] = x[i - 1, j - 1] + c
            trace[i, j] = t
    trace[0, :], trace[:, 0] = 2, 1
    path, i, j = [], n, m
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        t = trace[i, j]
        i, j = (i - 1, j - 1) if t == 0 else ((i - 1, j) if t == 1 else (i, j - 1))
    return path[::-1]


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (6, 1), (5, 9), (12, 4), (7, 7)])
@pytest.mark.parametrize("kind", ["random", "ties", "zeros"])
def test_dtw_matches_the_double_loop(shape, kind) -> None:
    rng = np.random.default_rng(sum(shape))
    x = {"random": rng.standard_normal(shape), "ties": rng.integers(-1, 2, shape).astype(float), "zeros": np.zeros(shape)}[kind]
    for dtype in (np.float64, np.float32):
        path = alignment.dtw(x.astype(dtype))
        assert path.dtype == np.int32 and path.shape[1] == 2
        assert [tuple(p) for p in path.tolist()] == _dtw_loops(x.astype(dtype))
        assert tuple(path[0]) == (0, 0) and tuple(path[-1]) == (shape[0] - 1, shape[1] - 1)


def test_median_filter_is_a_sliding_median() -> None:
    x = torch.randn(3, 4, 11)
    y = alignment.median_filter(x, 3)
    padded = torch.nn.functional.pad(x.reshape(12, 1, 11), (1, 1), mode="reflect").reshape(3, 4, 13)
    for k in range(11):
        assert torch.equal(y[..., k], padded[..., k : k + 3].median(dim=-1).values)
    assert torch.equal(alignment.median_filter(x, 1), x)


def test_heads_resolve_in_config_order_and_skip_missing() -> None:
    resolved = alignment.resolve_heads({"3": [1], "0": [2], "2": [3, 0, 9]})
    assert resolved == [(3, [1]), (0, [2]), (2, [3, 0, 9])]
    assert alignment.select_heads(resolved, 4, 4) == [(3, 1), (0, 2), (2, 3), (2, 0)]
    assert alignment.select_heads(alignment.resolve_heads(None), 4, 4) == []  # the 2 B default on a tiny model
    assert alignment.select_heads(alignment.resolve_heads(None), 24, 16)[:3] == [(2, 6), (3, 10), (3, 11)]


def test_tag_mask_and_unclosed_tag() -> None:
    texts = ["[Ver", "se", "]\n", "hello", " [", "spoken", "]", " world", "[", "oops"]
    assert alignment.tag_mask(texts).tolist() == [0, 0, 0, 1, 0, 0, 0, 1, 0, 0]


def test_incremental_texts_split_characters() -> None:
    table = {1: "é".encode()[:1], 2: "é".encode()[1:], 3: b"a", 4: b"\n"}

    def decode(ids):
        return b"".join(table[i] for i in ids).decode("utf-8", errors="replace")

    assert alignment.incremental_texts([3, 1, 2, 4], decode) == ["a", "\ufffd", "", "\n"]


def _line(text, start, end=None):
    return alignment.LyricLine(text, start, start if end is None else end, (0, 1))


def test_lrc_and_vtt_format() -> None:
    lines = [_line("[Intro]", 0.0), _line("first", 1.034, 1.5), _line("second", 59.997, 59.997), _line("third", 61.5, 62.0)]
    assert alignment.format_lrc(lines) == "[00:00.00][Intro]\n[00:01.03]first\n[00:60.00]second\n[01:01.50]third"
    vtt = alignment.format_vtt(lines, duration=70.0)
    assert vtt.startswith("WEBVTT\n\n")
    cues = re.findall(r"(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})\n(.+)", vtt)
    assert [c[8] for c in cues] == ["[Intro]", "first", "second", "third"]
    times = [(int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000, int(h2) * 3600 + int(m2) * 60 + int(s2) + int(ms2) / 1000)
             for h, m, s, ms, h2, m2, s2, ms2, _ in cues]
    assert times == [(0.0, 1.034), (1.034, 59.997), (59.997, 61.5), (61.5, 70.0)]


def test_single_head_times_are_the_heads_own() -> None:
    """With one head the timestamps average over heads (not over tokens, upstream's crash)."""
    torch.manual_seed(0)
    attn = torch.softmax(torch.randn(1, 6, 10) * 4, dim=-1)
    mats = alignment.timing_matrices(attn)
    assert mats["calc"].shape == (6, 10)
    both = alignment.timing_matrices(torch.cat([attn, attn]))
    torch.testing.assert_close(both["calc"], mats["calc"])


def test_capture_pass_follows_the_sampling_forward() -> None:
    """The capture pass's probabilities equal softmax(q·kᵀ/√d) recomputed from what the normal
    forward feeds each cross-attention, and forward itself is unchanged by the capture."""
    model = tiny_dit(3)
    dec = model.decoder
    g = torch.Generator().manual_seed(1)
    x, ctx, enc = torch.randn(2, 9, 64, generator=g), torch.randn(2, 9, 128, generator=g), torch.randn(2, 7, 64, generator=g)
    t = torch.tensor([1.0, 0.25])
    seen = {}
    hooks = [layer.cross_attn.register_forward_hook(lambda m, a, kw, out, i=i: seen.__setitem__(i, (a[0], kw["kv"])), with_kwargs=True)
             for i, layer in enumerate(dec.layers)]
    with torch.no_grad():
        v1 = dec(x, t, t, enc, ctx)
        for h in hooks:
            h.remove()
        probs = dec.cross_attention_probs(x, t, t, enc, ctx, [2, 0])
        v2 = dec(x, t, t, enc, ctx)
    assert torch.equal(v1, v2) and sorted(probs) == [0, 2]
    for i in (0, 2):
        attn = dec.layers[i].cross_attn
        h, (k, _) = seen[i]
        q = attn.q_norm(attn.q_proj(h).view(2, 5, attn.heads, attn.head_dim)).transpose(1, 2)
        k = k.repeat_interleave(attn.heads // k.shape[1], dim=1)
        expected = torch.softmax(q @ k.transpose(-1, -2) / attn.head_dim**0.5, dim=-1)
        torch.testing.assert_close(probs[i], expected, atol=1e-5, rtol=0)
        assert probs[i].shape == (2, 4, 5, 7)


def test_vtt_escapes_cue_text() -> None:
    vtt = alignment.format_vtt([_line("rock & roll <live> --> now", 1.0, 2.0)], duration=3.0)
    assert vtt.splitlines()[4] == "rock &amp; roll &lt;live&gt; --&gt; now"
    assert vtt.count("-->") == 1
