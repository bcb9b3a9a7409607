"""Lyric timestamps and alignment score through the pipeline and the command line (tiny tree, CPU)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import soundfile as sf
import torch

from songstep.cli import main
from songstep.errors import InvalidRequest
from songstep.pipeline import Pipeline
from songstep.request import GenerationRequest
from songstep.testing.reference_alignment import scale_cross_qk_norms

LYRICS = "[Verse]\nhello there world\nsecond line here\n\n[Chorus]\nla la la\nand the last one"
LRC_LINE = re.compile(r"^\[(\d\d):(\d\d\.\d\d)\](.*)$")
VTT_CUE = re.compile(r"^(\d\d):(\d\d):(\d\d\.\d{3}) --> (\d\d):(\d\d):(\d\d\.\d{3})$")


def parse_lrc(text: str) -> list[tuple[float, str]]:
    out = []
    for line in text.strip("\n").splitlines():
        m = LRC_LINE.match(line)
        assert m, f"not an LRC line: {line!r}"
        out.append((int(m[1]) * 60 + float(m[2]), m[3]))
    return out


def parse_vtt(text: str) -> list[tuple[float, float, str]]:
    blocks = text.strip("\n").split("\n\n")
    assert blocks[0] == "WEBVTT"
    cues = []
    for block in blocks[1:]:
        ident, timing, *body = block.split("\n")
        m = VTT_CUE.match(timing)
        assert ident.isdigit() and m and body, block
        start = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
        end = int(m[4]) * 3600 + int(m[5]) * 60 + float(m[6])
        cues.append((start, end, "\n".join(body)))
    return cues


def check_files(lrc_path: Path, vtt_path: Path, seconds: float, lyrics: str) -> list[float]:
    lines = parse_lrc(lrc_path.read_text(encoding="utf-8"))
    cues = parse_vtt(vtt_path.read_text(encoding="utf-8"))
    expected = [ln.strip() for ln in lyrics.splitlines() if ln.strip()]
    assert [t for _, t in lines] == [c[2] for c in cues] == expected
    starts = [s for s, _ in lines]
    assert starts == sorted(starts) and all(0.0 <= s < seconds for s in starts)
    assert [c[0] for c in cues] == pytest.approx(starts, abs=0.006)
    assert all(0.0 <= a < b <= seconds + 1e-3 for a, b, _ in cues)
    return starts


def test_generate_lrc_and_score_through_the_cli(tiny_tree, tmp_path, capsys) -> None:
    code = main(["generate", "--model", str(tiny_tree), "--caption", "pop", "--lyrics", LYRICS, "--language", "en",
                 "--duration", "10", "--seed", "5", "--format", "wav", "--quiet", "--device", "cpu", "--name", "song",
                 "--output-dir", str(tmp_path), "--lrc", "--score"])
    assert code == 0
    printed = [Path(p) for p in capsys.readouterr().out.split()]
    wav, lrc, vtt = tmp_path / "song.wav", tmp_path / "song.lrc", tmp_path / "song.vtt"
    assert {wav, lrc, vtt, tmp_path / "song.json"} <= set(printed)
    seconds = sf.info(str(wav)).frames / sf.info(str(wav)).samplerate
    check_files(lrc, vtt, seconds, LYRICS)
    params = json.loads((tmp_path / "song.json").read_text())["params"]
    score = params["lyric_score"]
    assert 0.0 <= score["lm_score"] <= 1.0 and 0.0 <= score["dit_score"] <= 1.0
    for half in ("lm", "dit"):
        parts = score[half]
        raw = parts["coverage"] ** 2 * parts["monotonicity"] ** 2 * parts["confidence"]
        assert score[f"{half}_score"] == round(min(max(raw, 0.0), 1.0), 4)
    assert params["lyric_alignment"]["truncated"] is False
    assert [ln["text"] for ln in params["lyric_alignment"]["lines"]] == [t for _, t in parse_lrc(lrc.read_text())]


@pytest.mark.parametrize("song", [["--instrumental"], ["--lyrics", " [Instrumental] "], []])
def test_nothing_to_align_is_refused_without_files(tiny_tree, tmp_path, capsys, song) -> None:
    out = tmp_path / "out"
    code = main(["generate", "--model", str(tiny_tree), "--duration", "10", "--quiet", "--device", "cpu",
                 "--output-dir", str(out), "--lrc", *song])
    assert code == 2
    assert "nothing to align" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_align_command_writes_beside_the_audio(tiny_tree, source_wav, tmp_path, capsys) -> None:
    song = tmp_path / "song.wav"
    song.write_bytes(source_wav.read_bytes())
    lyrics = tmp_path / "lyrics.txt"
    lyrics.write_text(LYRICS, encoding="utf-8")
    code = main(["align", str(song), "--lyrics-file", str(lyrics), "--model", str(tiny_tree), "--device", "cpu",
                 "--language", "en"])
    assert code == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "song.lrc") in out and '"dit_score"' in out
    check_files(tmp_path / "song.lrc", tmp_path / "song.vtt", 4.0, LYRICS)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n", encoding="utf-8")
    other = tmp_path / "other.wav"
    other.write_bytes(source_wav.read_bytes())
    assert main(["align", str(other), "--lyrics-file", str(empty), "--model", str(tiny_tree), "--device", "cpu"]) == 2
    assert "nothing to align" in capsys.readouterr().err
    assert not (tmp_path / "other.lrc").exists() and not (tmp_path / "other.vtt").exists()


@pytest.fixture(scope="module")
def sharp_pipe(tiny_tree):
    """The tiny turbo pipeline with its cross-attention sharpened (q/k norms × 32), so the random
    heads are peaked like trained alignment heads and the timestamps spread over the song."""
    pipe = Pipeline.from_pretrained(tiny_tree, variant="turbo", device="cpu", lm="none")
    scale_cross_qk_norms(pipe.components.dit, 32.0)
    return pipe


def test_python_api_times_spread_and_latents_path_agrees(sharp_pipe) -> None:
    request = GenerationRequest(caption="pop", lyrics=LYRICS, language="en", duration=10, seed=3)
    result = sharp_pipe.run(request)
    aligned = sharp_pipe.align(result, request)
    starts = [ln.start for ln in aligned.lines]
    assert starts == sorted(starts) and len(set(starts)) >= 2 and starts[-1] < result.duration
    assert all(0 <= t.start <= t.end < result.duration for t in aligned.tokens)
    assert aligned.lrc.splitlines() == [f"[{int(s // 60):02d}:{s % 60:05.2f}]{ln.text}" for s, ln in zip(starts, aligned.lines)]
    again = sharp_pipe.align(result.latents[0], request.replace(seed=result.seeds[0]), score=False)
    assert again.lrc == aligned.lrc and again.score is None
    assert aligned.heads == [(1, 0), (1, 3), (2, 1), (3, 2), (3, 3)]


def test_python_api_refuses_and_truncates(sharp_pipe) -> None:
    latents = torch.randn(250, 64, generator=torch.Generator().manual_seed(0))
    for lyrics in ("", "[Instrumental]", "  \n"):
        with pytest.raises(InvalidRequest, match="nothing to align"):
            sharp_pipe.align(latents, GenerationRequest(lyrics=lyrics, duration=10))
    with pytest.raises(InvalidRequest, match="nothing to align"):
        sharp_pipe.align(latents, GenerationRequest(lyrics="la la", instrumental=True, duration=10))
    long = "\n".join(f"line number {i} goes on and on" for i in range(600))
    aligned = sharp_pipe.align(latents, GenerationRequest(lyrics=long, duration=10, seed=1), score=False)
    tok = sharp_pipe.components.text.tokenizer
    assert len(tok(long)["input_ids"]) > 2048
    assert aligned.truncated
    header = len(tok.encode("# Languages\nunknown\n\n# Lyric\n", add_special_tokens=False))
    assert len(aligned.tokens) == 2048 - 1 - header  # the 2048-token prompt keeps its end-of-text token
    texts = [ln.text for ln in aligned.lines]
    assert 0 < len(texts) < 600 and texts[:-1] == long.splitlines()[: len(texts) - 1]
    assert long.splitlines()[len(texts) - 1].startswith(texts[-1])


def test_lrc_and_score_are_request_fields_with_result_fields(tiny_tree) -> None:
    from songstep.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(tiny_tree, device="cpu", lm="none")
    result = pipe.generate("pop", LYRICS, duration=10, seed=5, steps=2, batch=2, lrc=True, score=True)
    assert len(result.alignments) == 2
    for aligned in result.alignments:
        assert aligned.lrc.startswith("[") and aligned.vtt.startswith("WEBVTT") and aligned.score is not None
    plain = pipe.generate("pop", LYRICS, duration=10, seed=5, steps=2, batch=2)
    assert plain.alignments is None and torch.equal(plain.audio, result.audio)  # timing never changes the audio
    with pytest.raises(InvalidRequest, match="nothing to align"):
        pipe.generate("pop", duration=10, instrumental=True, lrc=True)
