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


def _model_flags(p: argparse.ArgumentParser, *, dit: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL, help="checkpoints directory or hub repo (default: %(default)s)")
    if dit:
        g.add_argument("--variant", default=None, help="turbo | base | sft | xl-turbo | xl-base | xl-sft (default: turbo; base for add-layer/extract/complete)")
    g.add_argument("--device", default=None, help="cuda | cpu | cuda:1 … (default: cuda when available)")
    g.add_argument("--root", default="checkpoints", help="where hub downloads go (default: %(default)s)")
    g.add_argument("--offline", action="store_true", help="never touch the network")
    if dit:
        g.add_argument("--offload", action=argparse.BooleanOptionalAction, default=None, help="keep idle parts on the CPU (default: by GPU tier)")
        g.add_argument("--compile", nargs="?", const=True, default=False, metavar="BACKEND",
                       help="torch.compile the DiT, one compile per 30 s length bucket (inductor; or a mode such as reduce-overhead, or a backend)")
        g.add_argument("--quantize", choices=("int8",), default=None, help="int8 weight-only DiT (needs songstep[quant])")


def _song_flags(p: argparse.ArgumentParser) -> None:
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


def _lm_flags(p: argparse.ArgumentParser, *, lm_default: str | None, thinking: bool = True) -> None:
    """The planner LM: which one, and how it samples (spec pipeline.md §8.2 defaults)."""
    g = p.add_argument_group("planner LM")
    default = "auto: by GPU tier, none on CPU" if lm_default is None else "auto: by GPU tier, else 1.7B"
    g.add_argument("--lm", default=lm_default, help=f"auto | none | 0.6B | 1.7B | 4B | LM folder (default: {default})")
    g.add_argument("--lm-backend", choices=("transformers", "vllm"), default="transformers",
                   help="planner runtime; vllm needs the [vllm] extra (default: %(default)s)")
    if thinking:
        g.add_argument("--thinking", action=argparse.BooleanOptionalAction, default=None,
                       help="let the LM write audio codes for the DiT (default: on when an LM is loaded)")
        g.add_argument("--no-caption-rewrite", dest="use_cot_caption", action="store_false",
                       help="keep the caption instead of the LM's")
        g.add_argument("--lm-cfg", dest="lm_cfg_scale", type=float, default=2.0, help="LM CFG scale, codes phase (default: %(default)s)")
    g.add_argument("--lm-temperature", type=float, default=0.85)
    g.add_argument("--lm-top-p", type=float, default=0.9)
    g.add_argument("--lm-top-k", type=int, default=0, help="0 = off")
    g.add_argument("--max-new-tokens", type=int, default=None, help="cap on the LM's free-text tokens (default: 4032)")


def _common(p: argparse.ArgumentParser) -> None:
    _model_flags(p)
    _song_flags(p)
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
    o.add_argument("--no-normalize", dest="normalize", action="store_false", default=None,
                   help="keep the decoded level (default: peak at -1 dBFS)")
    o.add_argument("--loudness", type=float, default=None, metavar="LUFS",
                   help="scale each take to this integrated loudness, e.g. -14 (needs songstep[loudness])")
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
    "generate": ("text2music", "a new song from a caption (and lyrics); a planner LM can write its plan", ()),
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


def _planner_parsers(sub) -> None:
    """`plan`, `create-sample` and `understand`: the planner LM alone; each prints JSON."""
    p = sub.add_parser("plan", help="plan a song with the LM (metadata + audio codes) and print it as JSON")
    _model_flags(p, dit=False)
    _song_flags(p)
    p.add_argument("--seed", type=int, default=None, help="items get seed, seed+1, …")
    p.add_argument("--batch", type=int, default=1, help="plans to make (printed as a list when > 1)")
    _lm_flags(p, lm_default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    c = sub.add_parser("create-sample", help="simple mode: one sentence → caption, lyrics and metadata (JSON)")
    c.add_argument("description")
    _model_flags(c, dit=False)
    c.add_argument("--instrumental", action="store_true")
    c.add_argument("--language", default=None, help="vocal language code to use, e.g. en")
    c.add_argument("--seed", type=int, default=None)
    _lm_flags(c, lm_default="auto", thinking=False)
    u = sub.add_parser("understand", help="describe a song (audio file, or a .txt of audio codes) as JSON")
    u.add_argument("file", type=Path)
    _model_flags(u)
    u.add_argument("--seed", type=int, default=None, help="also samples the VAE posterior (default: its mean)")
    _lm_flags(u, lm_default="auto", thinking=False)


def build_parser() -> argparse.ArgumentParser:
    from songstep.tasks import get_task

    parser = argparse.ArgumentParser(prog="songstep", description="ACE-Step 1.5 music generation")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (task, help_text, flags) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        _common(p)
        for flag_names, options in flags:
            p.add_argument(*flag_names, **options)
        if not get_task(task).needs_source:  # the planner LM only plans songs without source audio
            _lm_flags(p, lm_default=None)
        p.set_defaults(task=task)
    _planner_parsers(sub)
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


_STAGES = {  # progress stage → (bar label, unit)
    "lm": ("planning", "tok"),
    "lm-codes": ("writing codes", "tok"),
    "dit": ("diffusion", "step"),
    "vae": ("decoding", "step"),
}


def _progress_bar(quiet: bool):
    if quiet:
        return None, lambda: None
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def progress(stage: str, done: int, total: int) -> None:
        label, unit = _STAGES.get(stage, (stage, "step"))
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=label, unit=unit, file=sys.stderr, leave=False)
        bar.n = done
        bar.refresh()

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return progress, close


def _stem(params: dict[str, Any], seed: int) -> str:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{params['task']}-{seed}-{digest}"


def _device(args: argparse.Namespace) -> str:
    import torch

    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _lm_choice(args: argparse.Namespace) -> str:
    """The `lm=` of the pipeline: none for commands without LM flags; `--lm` when given; with an
    explicit `--thinking` on a tier without a default LM, the bundle's 1.7B; else auto."""
    if not hasattr(args, "lm"):
        return "none"
    if args.lm:
        return args.lm
    if getattr(args, "thinking", None):
        from songstep.pipeline.tiers import detect_tier

        return "auto" if detect_tier(_device(args)).lm else "1.7B"
    return "auto"


def _plan_options(args: argparse.Namespace):
    if not hasattr(args, "lm_temperature"):
        return None
    from songstep.planner import PlanOptions

    extra = {"cfg_scale": args.lm_cfg_scale, "use_cot_caption": args.use_cot_caption} if hasattr(args, "lm_cfg_scale") else {}
    return PlanOptions(temperature=args.lm_temperature, top_p=args.lm_top_p, top_k=args.lm_top_k, **extra)


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    return dict(temperature=args.lm_temperature, top_p=args.lm_top_p, top_k=args.lm_top_k, max_new_tokens=args.max_new_tokens)


def _item_params(result, i: int) -> dict[str, Any]:
    """Take i's parameters: the batch's, with a planned take's own fields (seed, metas, codes)."""
    items = result.params.get("items") or []
    base = {k: v for k, v in result.params.items() if k != "items"}
    return {**base, **(items[i] if i < len(items) else {})}


def run_task(args: argparse.Namespace) -> int:
    from songstep import audio
    from songstep.config import GenerationRequest
    from songstep.pipeline import Pipeline
    from songstep.tasks import get_task

    kw = _request_kwargs(args)
    if args.loudness is not None:
        audio.check_loudness_target(args.loudness)  # before minutes of model loading
    variant = args.variant or ("base" if get_task(kw["task"]).needs_turbo_off else "turbo")
    pipe = Pipeline.from_pretrained(args.model, variant=variant, device=args.device, offload=args.offload, root=args.root,
                                    offline=args.offline, lm=_lm_choice(args),
                                    lm_backend=getattr(args, "lm_backend", "transformers"),
                                    compile=args.compile, quantize=args.quantize)
    if pipe.planner is not None and getattr(args, "max_new_tokens", None):
        pipe.planner.max_new_tokens = args.max_new_tokens
    progress, close = _progress_bar(args.quiet)
    try:
        result = pipe.run(GenerationRequest(**kw), progress=progress, normalize=args.normalize, loudness=args.loudness,
                          thinking=getattr(args, "thinking", None), plan_options=_plan_options(args))
    finally:
        close()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(result.seeds):
        params = {**_item_params(result, i), "seed": seed, "batch_index": i, "samples": int(result.audio.shape[-1]), "sample_rate": result.sample_rate}
        stem = args.name if args.name and len(result.seeds) == 1 else (f"{args.name}-{i}" if args.name else _stem(params, seed))
        path = audio.save_audio(args.output_dir / f"{stem}.{args.format}", result.audio[i], result.sample_rate, args.format, params=params)
        sidecar = audio.write_sidecar(path, params, result.timings)
        print(path)
        print(sidecar)
    return 0


def _load_planner(args: argparse.Namespace):
    from songstep.pipeline.components import resolve_lm
    from songstep.pipeline.tiers import detect_tier
    from songstep.planner import Planner

    device = _device(args)
    tier = detect_tier(device)
    folder = resolve_lm(args.model, _lm_choice_for_tool(args), tier.lm, args.root, args.offline)
    if folder is None:
        from songstep.errors import InvalidRequest

        raise InvalidRequest("this command needs the planner LM; pass --lm 0.6B, 1.7B, 4B or an LM folder")
    return Planner.from_pretrained(folder, device=device, max_duration=tier.max_duration_lm, max_new_tokens=args.max_new_tokens,
                                   backend=args.lm_backend)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def run_plan(args: argparse.Namespace) -> int:
    from songstep.config import GenerationRequest

    planner = _load_planner(args)
    request = GenerationRequest(**_request_kwargs(args))
    thinking = args.thinking is not False
    progress, close = _progress_bar(args.quiet)
    try:
        plans = planner.plan_batch(request, thinking=thinking, options=_plan_options(args), progress=progress)
    finally:
        close()
    out = [plan.to_dict() for plan in plans]
    _print_json(out[0] if len(out) == 1 else out)
    return 0


def run_create_sample(args: argparse.Namespace) -> int:
    planner = _load_planner(args)
    desc = planner.create_sample(args.description, instrumental=args.instrumental, language=args.language,
                                 seed=args.seed, **_sampling(args))
    _print_json(desc.to_dict())
    return 0


def run_understand(args: argparse.Namespace) -> int:
    from songstep.errors import InvalidAudio

    if not args.file.is_file():
        raise InvalidAudio(f"{args.file}: no such file")
    text = args.file.read_text(encoding="utf-8", errors="ignore") if args.file.suffix.lower() == ".txt" else ""
    if "<|audio_code_" in text:
        desc = _load_planner(args).understand_codes(text, seed=args.seed, **_sampling(args))
    else:
        from songstep.pipeline import Pipeline

        pipe = Pipeline.from_pretrained(args.model, variant=args.variant or "turbo", device=args.device, offload=args.offload,
                                        root=args.root, offline=args.offline, lm=_lm_choice_for_tool(args),
                                        lm_backend=args.lm_backend)
        desc = pipe.understand(str(args.file), seed=args.seed, **_sampling(args))
    _print_json(desc.to_dict())
    return 0


def _lm_choice_for_tool(args: argparse.Namespace) -> str:
    """Planner commands always need an LM: auto falls back to the bundle's 1.7B."""
    if args.lm not in (None, "auto"):
        return args.lm
    from songstep.pipeline.tiers import detect_tier

    return detect_tier(_device(args)).lm or "1.7B"


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
    info["tier"] = {"name": tier.name, "max_batch": tier.max_batch, "lm": tier.lm, "offload": tier.offload,
                    "max_duration": tier.max_duration, "max_duration_lm": tier.max_duration_lm}
    from songstep.models.precision import describe

    info["precision"] = describe(device)
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

    handlers = {"download": run_download, "info": run_info, "plan": run_plan,
                "create-sample": run_create_sample, "understand": run_understand}
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
