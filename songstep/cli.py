"""`songstep` command line: generate songs, edit them, download and inspect models.

Every generating command writes `<name>.<format>` plus a `<name>.json` sidecar into the output
directory and prints their paths. Errors are one line on stderr with a non-zero exit (2 for a bad
request or file, 1 otherwise, 130 on Ctrl-C, 143 on SIGTERM); takes are written whole under unique
names (see `songstep.outputs`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from songstep import cli_align

DEFAULT_MODEL = "ACE-Step/Ace-Step1.5"


def _variants() -> tuple[str, ...]:
    from songstep.config import VARIANTS

    return VARIANTS


def _verbosity(p: argparse.ArgumentParser, top: bool = False) -> None:
    """-v / --quiet work before or after the subcommand."""
    default = 0 if top else argparse.SUPPRESS
    p.add_argument("-v", "--verbose", action="count", default=default, help="more log output (-vv: debug; full traces)")
    p.add_argument("--quiet", action="store_true", default=False if top else argparse.SUPPRESS,
                   help="no status lines or progress bars")


def _model_flags(p: argparse.ArgumentParser, *, dit: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help=f"checkpoints directory or hub repo (default: {DEFAULT_MODEL})")
    if dit:
        g.add_argument("--variant", default=None, choices=_variants(),
                       help="DiT variant (default: turbo; base for add-layer/extract/complete)")
    g.add_argument("--device", default=None, help="cuda | cpu | mps | cuda:1 … (default: cuda when available)")
    g.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="weights' dtype (default: bfloat16 on GPUs that support it, else float32)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    g.add_argument("--root", default="checkpoints", help="where hub downloads go (default: %(default)s)")
    g.add_argument("--offline", action="store_true", help="never touch the network")
    if dit:
        g.add_argument("--offload", action=argparse.BooleanOptionalAction, default=None,
                       help="keep idle parts on the CPU (default: by GPU tier)")
        g.add_argument("--compile", nargs="?", const=True, default=False, metavar="BACKEND",
                       help="torch.compile the DiT, one compile per 30 s length bucket (inductor; or a mode "
                            "such as reduce-overhead, or a backend)")
        g.add_argument("--quantize", choices=("int8",), default=None, help="int8 weight-only DiT (needs songstep[quant])")


def _lm_flags(p: argparse.ArgumentParser, *, lm_default: str | None) -> None:
    """Which planner LM and runtime; its sampling settings are request fields."""
    g = p.add_argument_group("planner LM")
    default = "auto: by GPU tier, none on CPU" if lm_default is None else "auto: by GPU tier, else 1.7B"
    g.add_argument("--lm", default=lm_default, help=f"auto | none | 0.6B | 1.7B | 4B | LM folder (default: {default})")
    g.add_argument("--lm-backend", choices=("transformers", "vllm"), default="transformers",
                   help="planner runtime; vllm needs the [vllm] extra (default: %(default)s)")


def _output_flags(p: argparse.ArgumentParser) -> None:
    o = p.add_argument_group("output")
    o.add_argument("--format", default="wav", choices=("wav", "flac", "mp3", "ogg"), help="(default: %(default)s)")
    o.add_argument("--output-dir", type=Path, default=Path("outputs"), help="(default: %(default)s)")
    o.add_argument("--name", default=None, help="file name stem (default: task-seed-hash; never overwrites)")
    o.add_argument("--overwrite", action="store_true", help="replace files of the same --name")
    o.add_argument("--bit-depth", type=int, default=None, choices=(16, 24, 32),
                   help="wav: 16/24-bit PCM or 32-bit float; flac: 16/24 (default: 16)")
    o.add_argument("--mp3-bitrate", type=_bitrate, default=128, metavar="{128k,192k,256k,320k}",
                   help="constant mp3 bit rate (default: 128k)")


def _bitrate(text: str) -> int:
    from songstep.audio import MP3_BITRATES

    value = text.strip().lower().removesuffix("k").removesuffix("kbps").removesuffix("kb/s")
    if not value.isdigit() or int(value) not in MP3_BITRATES:
        raise argparse.ArgumentTypeError(f"choose one of {', '.join(f'{b}k' for b in MP3_BITRATES)}")
    return int(value)


# command → (task row name, help)
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("text2music", "a new song from a caption (and lyrics); a planner LM can write its plan"),
    "cover": ("cover", "restyle a source song"),
    "repaint": ("repaint", "regenerate a time window of a source (negative start / end past it extends)"),
    "add-layer": ("lego", "add one instrument track to a source (base model)"),
    "extract": ("extract", "isolate one track of a source (base model)"),
    "complete": ("complete", "write the accompaniment for a single track (base model)"),
}
TASK_COMMANDS = tuple(COMMANDS)


def _task_parser(sub, name: str, task: str, help_text: str) -> None:
    from songstep.flags import add_request_flags
    from songstep.tasks import get_task

    p = sub.add_parser(name, help=help_text, description=help_text)
    _verbosity(p)
    _model_flags(p)
    src = p.add_argument_group("request file")
    src.add_argument("--from", dest="from_file", type=Path, default=None, metavar="FILE",
                     help="replay a sidecar .json (or a .toml of request fields); flags given here override it")
    add_request_flags(p, task)
    p.add_argument("--lyrics-file", type=Path, default=None, help="read the lyrics from a UTF-8 text file")
    if not get_task(task).needs_source:  # the planner LM only plans songs without source audio
        _lm_flags(p, lm_default=None)
    _output_flags(p)
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                   help="adapter (peft folder or .safetensors) at a scale (default 1); repeatable")
    p.set_defaults(task=task)


def _planner_parsers(sub) -> None:
    """`plan`, `create-sample` and `understand`: the planner LM alone; each prints JSON."""
    from songstep.flags import add_request_flags

    p = sub.add_parser("plan", help="plan a song with the LM (metadata + audio codes) and print it as JSON")
    _verbosity(p)
    _model_flags(p, dit=False)
    add_request_flags(p, "text2music")
    p.add_argument("--lyrics-file", type=Path, default=None)
    _lm_flags(p, lm_default="auto")
    c = sub.add_parser("create-sample", help="simple mode: one sentence → caption, lyrics and metadata (JSON)")
    _verbosity(c)
    c.add_argument("description")
    _model_flags(c, dit=False)
    c.add_argument("--instrumental", action="store_true")
    c.add_argument("--language", default=None, help="vocal language code to use, e.g. en")
    c.add_argument("--seed", type=int, default=None)
    _lm_flags(c, lm_default="auto")
    _lm_sampling(c)
    u = sub.add_parser("understand", help="describe a song (audio file, or a .txt of audio codes) as JSON")
    _verbosity(u)
    u.add_argument("file", type=Path)
    _model_flags(u)
    u.add_argument("--seed", type=int, default=None, help="also samples the VAE posterior (default: its mean)")
    _lm_flags(u, lm_default="auto")
    _lm_sampling(u)


def _lm_sampling(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("LM sampling")
    g.add_argument("--lm-temperature", type=float, default=0.85)
    g.add_argument("--lm-top-p", type=float, default=0.9)
    g.add_argument("--lm-top-k", type=int, default=0, help="0 = off")
    g.add_argument("--max-new-tokens", type=int, default=None, help="cap on the LM's free-text tokens (default: 4032)")


def build_parser() -> argparse.ArgumentParser:
    from songstep import __version__

    parser = argparse.ArgumentParser(prog="songstep", description="ACE-Step 1.5 music generation",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"songstep {__version__}")
    _verbosity(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (task, help_text) in COMMANDS.items():
        _task_parser(sub, name, task, help_text)
    _planner_parsers(sub)
    cli_align.add_parser(sub)
    from songstep.training.cli import add_parsers as _training_parsers

    _training_parsers(sub)
    d = sub.add_parser("download", help="download official checkpoints")
    _verbosity(d)
    d.add_argument("components", nargs="*", default=None, help="default: turbo vae text-encoder lm-1.7B")
    d.add_argument("--root", default="checkpoints")
    d.add_argument("--update", action="store_true", help="move unpinned repos to the hub's current main")
    d.add_argument("--list", action="store_true", help="list known components")
    i = sub.add_parser("info", help="installed components, device, free memory and GPU tier")
    _verbosity(i)
    i.add_argument("--root", default="checkpoints")
    i.add_argument("--model", default=None, help="also inspect this checkpoints folder (official or diffusers layout) or repo")
    i.add_argument("--device", default=None)
    from songstep.server import cli as server_cli  # `songstep serve` (its heavy imports are lazy)

    server_cli.add_parser(sub)
    from songstep.ui import cli as ui_cli  # `songstep ui` (gradio is imported only when it runs)

    ui_cli.add_parser(sub)
    return parser


def build_request(args: argparse.Namespace, task: str | None = None):
    """The request of a command: the `--from` file's fields, then the flags given, then
    `--lyrics-file`. Validated here, before any model is loaded."""
    from songstep.flags import request_fields
    from songstep.request import GenerationRequest, load_request_file

    task = task or args.task
    data: dict[str, Any] = {}
    if getattr(args, "from_file", None) is not None:
        doc = load_request_file(args.from_file)
        data = dict(doc.get("request") or doc.get("params", {}).get("request") or doc)
        args.take_index = doc.get("params", {}).get("batch_index")
        for key in ("weights", "params", "timings", "samples", "sample_rate", "batch_index"):
            data.pop(key, None)
        task = data.get("task", task) if args.command == "generate" else task
        _remember_model(args, doc)
    given = request_fields(args, task)
    if "seed" in given or "batch" in given:  # another batch: every take is written
        args.take_index = None
    data.update(given)
    if getattr(args, "lyrics_file", None) is not None:
        from songstep.cli_support import read_text_file

        data["lyrics"] = read_text_file(args.lyrics_file, "--lyrics-file")
    data["task"] = task
    return GenerationRequest(**data)


def _remember_model(args: argparse.Namespace, doc: dict[str, Any]) -> None:
    """A sidecar names the weights it was made with: use them unless --model/--variant are given."""
    weights = doc.get("weights") or doc.get("params", {}).get("weights") or {}
    if args.model is None and weights.get("model"):
        args.model = weights["model"]
    if getattr(args, "variant", None) is None and weights.get("variant"):
        args.variant = weights["variant"]
    adapters = doc.get("params", {}).get("adapters") or []
    if adapters and not getattr(args, "lora", None):
        args.lora = [f"{a['path']}:{a['scale']}" for a in adapters]


_STAGES = {  # progress stage → (bar label, unit)
    "lm": ("planning", "tok"),
    "lm-codes": ("writing codes", "tok"),
    "encode": ("encoding source", "step"),
    "dit": ("diffusion", "step"),
    "vae": ("decoding", "step"),
}


def _progress_bar(quiet: bool):
    """Bars on stderr that move while the work happens (a stage reported at 0 shows at once)."""
    if quiet:
        return None, lambda: None
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def progress(stage: str, done: int, total: int) -> None:
        label, unit = _STAGES.get(stage, (stage, "step"))
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=label, unit=unit, file=sys.stderr, leave=False, mininterval=0)
        bar.total, bar.n = total, done
        bar.refresh()

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return progress, close


def status(args: argparse.Namespace, message: str) -> None:
    """One status line per stage on stderr (not with --quiet); the library's own stages come
    through the `songstep.status` logger (see `_show_status`)."""
    logging.getLogger("songstep.status").info(message)


class _StderrLines(logging.Handler):
    """Bare message lines on the current sys.stderr (status lines)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr, flush=True)


def _show_status(quiet: bool) -> None:
    """The library logs one INFO line per stage to `songstep.status` (downloading, loading each
    component, device/dtype/tier); the command shows them as plain lines unless --quiet."""
    lg = logging.getLogger("songstep.status")
    for h in [h for h in lg.handlers if isinstance(h, _StderrLines)]:
        lg.removeHandler(h)
    lg.propagate = False
    lg.setLevel(logging.WARNING if quiet else logging.INFO)
    lg.addHandler(_StderrLines())


_LONG_COMMANDS = (*COMMANDS, "plan", "create-sample", "understand")


def _first_status(argv: list[str]) -> None:
    """The first status line, printed before torch is imported (seconds on a busy machine)."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in _LONG_COMMANDS and not {"-h", "--help", "--version", "--quiet"} & set(argv):
        print(f"songstep {command}: checking the request …", file=sys.stderr, flush=True)


def _one_line_per_warning() -> None:
    """huggingface_hub has its own stderr handler and also propagates to the root one, so each of
    its warnings would print twice: keep only the root handler."""
    import huggingface_hub.utils.logging  # noqa: F401 - configures the "huggingface_hub" logger

    hf_logger = logging.getLogger("huggingface_hub")
    for h in [h for h in hf_logger.handlers if type(h) is logging.StreamHandler]:
        hf_logger.removeHandler(h)


def _stem(params: dict[str, Any], seed: int) -> str:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{params['task']}-{seed}-{digest}"


def _device(args: argparse.Namespace):
    from songstep.devices import resolve_device

    return resolve_device(args.device)


def _lm_choice(args: argparse.Namespace, request=None) -> str:
    """The `lm=` of the pipeline: none for commands without LM flags; `--lm` when given; with an
    explicit thinking request on a tier without a default LM, the bundle's 1.7B; else auto."""
    if not hasattr(args, "lm"):
        return "none"
    if args.lm:
        return args.lm
    if request is not None and request.thinking:
        from songstep.pipeline.tiers import detect_tier

        return "auto" if detect_tier(_device(args)).lm else "1.7B"
    return "auto"


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    return dict(temperature=args.lm_temperature, top_p=args.lm_top_p, top_k=args.lm_top_k, max_new_tokens=args.max_new_tokens)


def _dtype(args: argparse.Namespace):
    import torch

    return getattr(torch, args.dtype) if getattr(args, "dtype", None) else None


def _check_before_load(args: argparse.Namespace, request) -> str:
    """Everything that needs no weights, before anything loads: the request (built already),
    the device, the variant against the task, the loudness target. Returns the variant."""
    from songstep import audio
    from songstep.config import preset
    from songstep.pipeline.plan import resolve
    from songstep.tasks import get_task

    _device(args)
    if args.bit_depth not in (None, 16) and args.bit_depth not in audio.BIT_DEPTHS.get(args.format, ()):
        from songstep.errors import InvalidRequest

        raise InvalidRequest(f"--bit-depth {args.bit_depth} does not apply to --format {args.format} "
                             "(wav: 16, 24, 32; flac: 16, 24)")
    if args.mp3_bitrate != 128 and args.format != "mp3":
        logging.getLogger("songstep.cli").warning("--mp3-bitrate %dk is ignored: --format is %s", args.mp3_bitrate,
                                                  args.format)
    if request.loudness is not None:
        audio.check_loudness_target(request.loudness)
    variant = args.variant or ("base" if get_task(request.task).needs_turbo_off else "turbo")
    resolve(request, preset(variant), variant)  # task vs family, step limits, warnings
    return variant


def run_task(args: argparse.Namespace) -> int:
    from songstep.outputs import TakeWriter, check_name
    from songstep.pipeline import Pipeline

    check_name(args.name)
    request = build_request(args)
    variant = _check_before_load(args, request)
    model = args.model or DEFAULT_MODEL
    pipe = Pipeline.from_pretrained(model, variant=variant, device=_device(args), dtype=_dtype(args), offload=args.offload,
                                    root=args.root, offline=args.offline, lm=_lm_choice(args, request),
                                    lm_backend=getattr(args, "lm_backend", "transformers"),
                                    compile=args.compile, quantize=args.quantize)
    if args.lora:
        from songstep.lora import apply_loras

        status(args, f"loading {len(args.lora)} adapter(s) …")
        apply_loras(pipe, args.lora)
    status(args, f"running {request.task} ({request.batch} take{'s' if request.batch > 1 else ''}) on {pipe.device}, "
                 f"{str(pipe.dtype).removeprefix('torch.')}, {pipe.tier.name} tier")
    progress, close = _progress_bar(args.quiet)
    try:
        result = pipe.run(request, progress=progress)
    finally:
        close()
    writer = TakeWriter(args.output_dir, args.format, overwrite=args.overwrite, announce=lambda path: print(path, flush=True),
                        bit_depth=args.bit_depth or 16, mp3_bitrate=args.mp3_bitrate)
    only = getattr(args, "take_index", None)
    for take in result.takes():
        i = take.params["batch_index"]
        if only is not None and i != only:
            continue  # replaying one take of a sidecar: the batch is remade, the take kept
        params = {**take.params, "samples": int(result.audio.shape[-1]), "sample_rate": result.sample_rate}
        stem = _stem(params, take.seed) if not args.name else (args.name if len(result.seeds) == 1 else f"{args.name}-{i}")
        extra, aligned = cli_align.take_extra(request, pipe, result, i)
        audio_path, _sidecar = writer.write(stem, take.audio, result.sample_rate, {**params, **extra}, result.timings)
        for lyric_file in cli_align.write_files(request, audio_path, aligned, extra):
            print(lyric_file, flush=True)
    return 0


def _load_planner(args: argparse.Namespace, max_new_tokens: int | None = None):
    from songstep.pipeline.components import resolve_lm
    from songstep.pipeline.tiers import detect_tier
    from songstep.planner import Planner

    device = _device(args)
    tier = detect_tier(device)
    folder = resolve_lm(args.model or DEFAULT_MODEL, _lm_choice_for_tool(args), tier.lm, args.root, args.offline)
    if folder is None:
        from songstep.errors import InvalidRequest

        raise InvalidRequest("this command needs the planner LM; pass --lm 0.6B, 1.7B, 4B or an LM folder")
    cap = max_new_tokens if max_new_tokens is not None else getattr(args, "max_new_tokens", None)
    from songstep.pipeline.components import announce_load

    announce_load(f"planner LM {folder.name}", folder)
    return Planner.from_pretrained(folder, device=device, max_duration=tier.max_duration_lm, max_new_tokens=cap,
                                   backend=args.lm_backend)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def run_plan(args: argparse.Namespace) -> int:
    from songstep.pipeline.planning import plan_options

    request = build_request(args, "text2music")
    planner = _load_planner(args, max_new_tokens=request.max_new_tokens)
    thinking = request.thinking is not False
    progress, close = _progress_bar(args.quiet)
    try:
        plans = planner.plan_batch(request, thinking=thinking, options=plan_options(request), progress=progress)
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
        raise InvalidAudio(f"{args.file}: {'is a directory' if args.file.is_dir() else 'no such file'}")
    text = args.file.read_text(encoding="utf-8", errors="ignore") if args.file.suffix.lower() == ".txt" else ""
    if "<|audio_code_" in text:
        desc = _load_planner(args).understand_codes(text, seed=args.seed, **_sampling(args))
    else:
        from songstep.pipeline import Pipeline

        pipe = Pipeline.from_pretrained(args.model or DEFAULT_MODEL, variant=args.variant or "turbo", device=args.device, offload=args.offload,
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
    from songstep.loading import hub, inventory
    from songstep.loading.preflight import format_size

    if args.list:
        locked = hub.LockFile(Path(args.root) / hub.LOCK_NAME).repos
        for comp in hub.list_components():
            revision = comp.revision or locked.get(comp.repo_id)
            pin = f"@{revision[:10]}" if revision else "@main (locked on first download)"
            pin += "" if comp.revision or not revision else " (locked)"
            where = comp.repo_id + (f"/{comp.subfolder}" if comp.subfolder else "")
            print(f"{comp.name:18} {where}{pin}  {comp.role}")
        return 0
    names = args.components or list(hub.DEFAULT_COMPONENTS)
    planned = inventory.plan_downloads(names, args.root, update=args.update)  # sizes first, before any byte
    for item in planned:
        status(args, f"will download {item.name}: {item.files} files, {format_size(item.size)} "
                     f"({item.repo_id}@{item.commit[:10]})")
    if planned:
        status(args, f"total: {format_size(sum(i.size for i in planned))} into {args.root}")
    for name, folder in hub.download(names, args.root, update=args.update).items():
        print(f"{name}: {folder}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    import torch

    from songstep import __version__
    from songstep.loading import hub, inventory
    from songstep.pipeline.tiers import detect_tier

    root = Path(args.root)
    logging.getLogger("songstep.status").setLevel(logging.WARNING)  # the JSON says it all
    device = _device(args).type
    info: dict[str, Any] = {"songstep": __version__, "torch": torch.__version__, "device": device}
    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        info.update(gpu=torch.cuda.get_device_name(), free_gib=round(free / 2**30, 2), total_gib=round(total / 2**30, 2))
    tier = detect_tier(device)
    info["tier"] = {"name": tier.name, "max_batch": tier.max_batch, "lm": tier.lm, "offload": tier.offload,
                    "max_duration": tier.max_duration, "max_duration_lm": tier.max_duration_lm}
    from songstep.models.precision import describe

    info["precision"] = describe(device)
    found = {comp.name: inventory.folder_state(root, comp) for comp in hub.list_components()}
    info["checkpoints"] = {"root": str(root), "components": {k: v for k, v in found.items() if v is not None},
                           "absent": [k for k, v in found.items() if v is None]}
    if args.model:
        from songstep.pipeline.components import describe_model

        info["model"] = describe_model(args.model, root=root)
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
    argv = list(sys.argv[1:] if argv is None else argv)
    _first_status(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2), format="%(levelname)s %(name)s: %(message)s")
    _show_status(args.quiet)
    _one_line_per_warning()
    _quiet_libraries(args.verbose)
    from songstep.cli_support import one_line, unexpected_error
    from songstep.errors import InvalidAudio, InvalidRequest, SongstepError
    from songstep.outputs import handle_signals

    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(max(1, args.threads))
    handlers = {"download": run_download, "info": run_info, "plan": run_plan,
                "create-sample": run_create_sample, "understand": run_understand, "align": cli_align.run_align}
    try:
        with handle_signals():  # SIGTERM like Ctrl-C: takes are whole or absent
            handler = getattr(args, "handler", None) or getattr(args, "func", None) or handlers.get(args.command, run_task)
            return handler(args)
    except KeyboardInterrupt as e:
        print("interrupted", file=sys.stderr)
        return getattr(e, "exit_code", 130)
    except InvalidRequest as e:  # every bad value of a request, one line each
        for line in str(e).splitlines() or [type(e).__name__]:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except InvalidAudio as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except (SongstepError, OSError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    except Exception as e:  # the last resort: one line, the trace with -v
        print(unexpected_error(e, args.verbose), file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
