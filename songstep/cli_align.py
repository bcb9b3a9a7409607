"""The command line's lyric-timing pieces: `songstep align AUDIO --lyrics-file F`, and the files and
sidecar fields of the generating commands' `--lrc` / `--score` (request fields: the flags are
generated from the request type and the pipeline computes `result.alignments`).

`--lrc` writes `<name>.lrc` (`[mm:ss.xx]line`) and `<name>.vtt` (WebVTT) beside each take;
`--score` adds `lyric_score` (lm_score, dit_score and their coverage / monotonicity / confidence)
to the take's sidecar and prints it, plus the planner's AutoScore (`auto_score`) when an LM is
loaded. A request without lyrics (or `[Instrumental]`) is refused before any model loads. Lyrics
longer than the model's 2048-token lyric prompt are cut exactly as generation cuts them; the lines
past the cut get no timestamps and the sidecar says `"truncated": true`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def take_extra(request, pipe, result, take: int) -> tuple[dict, Any]:
    """(sidecar fields, the alignment) for one take of a request with `lrc` or `score`; computed by
    the pipeline (`result.alignments`) before the take is written, so the sidecar is written once."""
    if not (request.lrc or request.score) or not result.alignments:
        return {}, None
    from songstep.pipeline.lyrics_timing import sidecar_fields

    aligned = result.alignments[take]
    extra = sidecar_fields(aligned, lrc=request.lrc, score=request.score)
    if request.score and pipe.planner is not None:
        import dataclasses

        extra["auto_score"] = dataclasses.asdict(pipe.score_takes(result)[take])
    return extra, aligned


def write_files(request, audio_path: Path, aligned, extra: dict) -> list[Path]:
    """The .lrc and .vtt beside the take as finally named (with --lrc); the score on stderr (--score)."""
    if aligned is None:
        return []
    from songstep.pipeline.lyrics_timing import write_lyric_files

    files = list(write_lyric_files(audio_path, aligned)) if request.lrc else []
    if request.score:
        shown = {k: v for k, v in extra.items() if k != "lyric_alignment"}
        sys.stderr.write(json.dumps({"file": str(audio_path), **shown}, ensure_ascii=False) + "\n")
    return files


def add_parser(sub) -> None:
    p = sub.add_parser("align", help="lyric timestamps (.lrc, .vtt) and alignment score for an existing song")
    p.add_argument("audio", type=Path, help="the song (wav, flac, mp3, …)")
    p.add_argument("--lyrics-file", type=Path, default=None, help="its lyrics (UTF-8 text, [Section] tags allowed)")
    p.add_argument("--lyrics", default=None, help="the lyrics as a string")
    p.add_argument("--language", default="unknown", help="vocal language code, e.g. en")
    p.add_argument("--caption", default="", help="style description (conditions the pass like generation)")
    p.add_argument("--steps", type=int, default=None, help="noise level 1/steps (default: the variant's step count)")
    p.add_argument("--no-score", dest="score", action="store_false", help="timestamps only")
    p.add_argument("--output-dir", type=Path, default=None, help="where .lrc/.vtt go (default: beside the audio)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="ACE-Step/Ace-Step1.5", help="checkpoints directory or hub repo (default: %(default)s)")
    g.add_argument("--variant", default="turbo")
    g.add_argument("--device", default=None)
    g.add_argument("--root", default="checkpoints")
    g.add_argument("--offline", action="store_true")


def run_align(args: argparse.Namespace) -> int:
    from songstep.errors import InvalidAudio, InvalidRequest
    from songstep.pipeline import Pipeline
    from songstep.pipeline.lyrics_timing import (
        align_audio,
        nothing_to_align,
        sidecar_fields,
        write_lyric_files,
    )
    from songstep.request import GenerationRequest

    if args.lyrics_file is not None:
        if not args.lyrics_file.is_file():
            raise InvalidRequest(f"{args.lyrics_file}: no such lyrics file")
        args.lyrics = args.lyrics_file.read_text(encoding="utf-8")
    reason = nothing_to_align(GenerationRequest(lyrics=args.lyrics or ""))
    if reason:
        raise InvalidRequest(f"align: {reason} (give --lyrics-file or --lyrics)")
    if not args.audio.is_file():
        raise InvalidAudio(f"{args.audio}: no such file")
    pipe = Pipeline.from_pretrained(args.model, variant=args.variant, device=args.device, root=args.root,
                                    offline=args.offline, lm="none")
    aligned = align_audio(pipe, str(args.audio), args.lyrics, language=args.language, caption=args.caption,
                          steps=args.steps, score=args.score)
    target = args.audio if args.output_dir is None else args.output_dir / args.audio.name
    target.parent.mkdir(parents=True, exist_ok=True)
    for path in write_lyric_files(target, aligned):
        sys.stdout.write(f"{path}\n")
    sys.stdout.write(json.dumps(sidecar_fields(aligned, lrc=True, score=args.score), indent=2, ensure_ascii=False) + "\n")
    return 0
