"""`songstep` command line: generate songs, edit them, download and inspect models.

Every generating command writes `<name>.<format>` plus a `<name>.json` sidecar into the output
directory and prints their paths. Errors are one line on stderr with a non-zero exit (2 for a bad
request or file, 1 otherwise, 130 on Ctrl-C); outputs are written atomically.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "ACE-Step/Ace-Step1.5"


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL, help="checkpoints directory or hub repo (default: %(default)s)")
    g.add_argument("--variant", default=None, help="turbo | base | sft | xl-turbo | xl-base | xl-sft (default: turbo; base for add-layer/extract/complete)")
    g.add_argument("--device", default=None, help="cuda | cpu | cuda:1 … (default: cuda when available)")
    g.add_argument("--root", default="checkpoints", help="where hub downloads go (default: %(default)s)")
    g.add_argument("--offline", action="store_true", help="never touch the network")
    g.add_argument("--offload", action=argparse.BooleanOptionalAction, default=None, help="keep idle parts on the CPU (default: by GPU tier)")
    s = p.add_argument_group("song")
    s.add_argument("--caption", default="", help="style description")
    s.add_argument("--lyrics", default=None)
    s.add_argument("--lyrics-file", type=Path, default=None)
    s.add_argument("--instrumental", action="store_true")
    s.add_argument("--duration", type=float, default=None, help="seconds, 10–600")
    s.add_argument("--bpm", type=int, default=None)
    s.add_argument("--key", dest="keyscale", default=None, help='e.g. "C major"')
    s.add_argument("--time-signature", dest="timesignature", default=None, help="2, 3, 4 or 6")
    s.add_argument("--language", default="unknown", help="vocal language code, e.g. en")
    s.add_argument("--reference", dest="reference_audio", default=None, help="reference audio for timbre")
    r = p.add_argument_group("sampling")
    r.add_argument("--seed", type=int, default=None, help="items get seed, seed+1, …")
    r.add_argument("--batch", type=int, default=1)
    r.add_argument("--steps", type=int, default=None)
    r.add_argument("--shift", type=float, default=None)
    r.add_argument("--guidance", type=float, default=None, help="CFG scale (base/sft only)")
    r.add_argument("--solver", default="euler", choices=("euler", "heun"))
    r.add_argument("--method", default="ode", choices=("ode", "sde"))
    r.add_argument("--no-dcw", dest="dcw", action="store_false", help="turn off the wavelet correction")
    o = p.add_argument_group("output")
    o.add_argument("--format", default="wav", choices=("wav", "flac", "mp3", "ogg"))
    o.add_argument("--output-dir", type=Path, default=Path("outputs"))
    o.add_argument("--name", default=None, help="file name stem (default: task-seed-hash)")
    o.add_argument("--no-normalize", dest="normalize", action="store_false", default=None)
    o.add_argument("--quiet", action="store_true", help="no progress bars")


# command → (task row name, help, extra flags). Flags write straight into GenerationRequest fields.
def _tracks(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


_SOURCE = (("--source",), dict(dest="source_audio", required=True, help="source audio file"))
_WINDOW = (
    (("--start",), dict(dest="repaint_start", type=float, default=0.0, help="window start, seconds (negative extends)")),
    (("--end",), dict(dest="repaint_end", type=float, default=None, help="window end, seconds (default: end of source)")),
)
COMMANDS: dict[str, tuple[str, str, tuple]] = {
    "generate": ("text2music", "a new song from a caption (and lyrics)", ()),
    "cover": ("cover", "restyle a source song", (
        _SOURCE,
        (("--strength",), dict(type=float, default=1.0, help="0–1 share of steps that follow the source")),
        (("--noise-strength",), dict(dest="cover_noise_strength", type=float, default=0.0, help="0–1: start closer to the source")),
    )),
    "repaint": ("repaint", "regenerate a time window of a source (negative start / end past it extends)", (
        _SOURCE,
        (("--start",), dict(dest="repaint_start", type=float, required=True, help="window start, seconds")),
        _WINDOW[1],
        (("--repaint-strength",), dict(type=float, default=0.5, help="0 keeps the source most, 1 least")),
    )),
    "add-layer": ("lego", "add one instrument track to a source (base model)", (
        _SOURCE, (("--track",), dict(dest="tracks", type=_tracks, required=True, help="e.g. guitar")), *_WINDOW,
    )),
    "extract": ("extract", "isolate one track of a source (base model)", (
        _SOURCE, (("--track",), dict(dest="tracks", type=_tracks, required=True, help="e.g. vocals")),
    )),
    "complete": ("complete", "write the accompaniment for a single track (base model)", (
        _SOURCE, (("--tracks",), dict(type=_tracks, required=True, help="comma-separated, e.g. drums,bass")),
    )),
}
TASK_COMMANDS = tuple(COMMANDS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="songstep", description="ACE-Step 1.5 music generation")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (task, help_text, flags) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        _common(p)
        for flag_names, options in flags:
            p.add_argument(*flag_names, **options)
        p.set_defaults(task=task)
    d = sub.add_parser("download", help="download official checkpoints")
    d.add_argument("components", nargs="*", default=None, help="default: turbo vae text-encoder lm-1.7B")
    d.add_argument("--root", default="checkpoints")
    d.add_argument("--update", action="store_true", help="move unpinned repos to the hub's current main")
    d.add_argument("--list", action="store_true", help="list known components")
    i = sub.add_parser("info", help="installed components, device, free memory and GPU tier")
    i.add_argument("--root", default="checkpoints")
    return parser


def _request_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    from dataclasses import fields

    from songstep.config import GenerationRequest

    kw = {f.name: getattr(args, f.name) for f in fields(GenerationRequest) if hasattr(args, f.name)}
    if args.lyrics_file is not None:
        kw["lyrics"] = args.lyrics_file.read_text(encoding="utf-8")
    kw["lyrics"] = kw.get("lyrics") or ""
    return kw


def _progress_bar(quiet: bool):
    if quiet:
        return None, lambda: None
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def progress(stage: str, done: int, total: int) -> None:
        label = {"dit": "diffusion", "vae": "decoding"}.get(stage, stage)
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=label, unit="step", file=sys.stderr, leave=False)
        bar.n = done
        bar.refresh()

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return progress, close


def _stem(params: dict[str, Any], seed: int) -> str:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{params['task']}-{seed}-{digest}"


def run_task(args: argparse.Namespace) -> int:
    from songstep import audio
    from songstep.config import GenerationRequest
    from songstep.pipeline import Pipeline
    from songstep.tasks import get_task

    kw = _request_kwargs(args)
    variant = args.variant or ("base" if get_task(kw["task"]).needs_turbo_off else "turbo")
    pipe = Pipeline.from_pretrained(args.model, variant=variant, device=args.device, offload=args.offload, root=args.root, offline=args.offline)
    progress, close = _progress_bar(args.quiet)
    try:
        result = pipe.run(GenerationRequest(**kw), progress=progress, normalize=args.normalize)
    finally:
        close()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(result.seeds):
        params = {**result.params, "seed": seed, "batch_index": i, "samples": int(result.audio.shape[-1]), "sample_rate": result.sample_rate}
        stem = args.name if args.name and len(result.seeds) == 1 else (f"{args.name}-{i}" if args.name else _stem(params, seed))
        path = audio.save_audio(args.output_dir / f"{stem}.{args.format}", result.audio[i], result.sample_rate, args.format, params=params)
        sidecar = audio.write_sidecar(path, params, result.timings)
        print(path)
        print(sidecar)
    return 0


def run_download(args: argparse.Namespace) -> int:
    from songstep.loading import hub

    if args.list:
        for comp in hub.list_components():
            print(f"{comp.name:18} {comp.repo_id}/{comp.subfolder or ''}  {comp.role}")
        return 0
    names = args.components or list(hub.DEFAULT_COMPONENTS)
    for name, folder in hub.download(names, args.root, update=args.update).items():
        print(f"{name}: {folder}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    import torch

    from songstep import __version__
    from songstep.loading import hub
    from songstep.pipeline.tiers import detect_tier

    root = Path(args.root)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    info: dict[str, Any] = {"songstep": __version__, "torch": torch.__version__, "device": device}
    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        info.update(gpu=torch.cuda.get_device_name(), free_gib=round(free / 2**30, 2), total_gib=round(total / 2**30, 2))
    tier = detect_tier(device)
    info["tier"] = {"name": tier.name, "max_batch": tier.max_batch, "lm": tier.lm, "offload": tier.offload}
    installed = {}
    for comp in hub.list_components():
        folder = root / comp.folder
        installed[comp.name] = str(folder) if folder.is_dir() else None
    info["checkpoints"] = {"root": str(root), "installed": installed}
    print(json.dumps(info, indent=2, ensure_ascii=False))
    return 0


def _quiet_libraries(verbose: int) -> None:
    """The command draws its own progress bars: silence the libraries' loading bars and
    deprecation chatter unless -v is given."""
    if verbose:
        return
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2), format="%(levelname)s %(name)s: %(message)s")
    _quiet_libraries(args.verbose)
    from songstep.errors import InvalidAudio, InvalidRequest, SongstepError

    handlers = {"download": run_download, "info": run_info}
    try:
        return handlers.get(args.command, run_task)(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (InvalidRequest, InvalidAudio) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (SongstepError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
