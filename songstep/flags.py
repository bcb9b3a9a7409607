"""CLI flags generated from the request type (`songstep.request.GenerationRequest`).

Each task command gets the flags of the fields that task uses (`x-tasks` in the field's schema),
grouped by `x-group`, named `--field-name` unless `x-flag` says otherwise, with the field's help,
range, choices and default shown. Flags default to "not given" (argparse.SUPPRESS), so only what a
user typed reaches the request and the request knows which values are defaults.
`request_to_argv` is the inverse, used by the round-trip test and by `--from` summaries.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any

from songstep.request import GenerationRequest

SKIP = {"task", "method"}  # implied by the command / deprecated
ALIASES = {"source_audio": ("--src",), "steps": ("--num-inference-steps",)}


def _base_type(annotation: Any) -> Any:
    """int | None → int; tuple[str, ...] → tuple; Any → str."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if args else str
    origin = typing.get_origin(annotation)
    if origin is tuple:
        return tuple
    return annotation if annotation in (bool, int, float, str) else str


def flag_name(name: str) -> str:
    extra = GenerationRequest.model_fields[name].json_schema_extra or {}
    return extra.get("x-flag") or "--" + name.replace("_", "-")


def fields_for(task: str) -> list[str]:
    """The request fields a task command exposes, in declaration order."""
    out = []
    for name, info in GenerationRequest.model_fields.items():
        extra = info.json_schema_extra or {}
        if name in SKIP or (extra.get("x-tasks") is not None and task not in extra["x-tasks"]):
            continue
        out.append(name)
    return out


def _bounds_text(info) -> str:
    lo = hi = None
    for m in info.metadata:
        lo = next((getattr(m, a) for a in ("ge", "gt") if getattr(m, a, None) is not None), lo)
        hi = next((getattr(m, a) for a in ("le", "lt") if getattr(m, a, None) is not None), hi)
    if lo is not None and hi is not None:
        return f"{lo:g}–{hi:g}" if isinstance(lo, float) or isinstance(hi, float) else f"{lo}–{hi}"
    return ""


def _pair(text: str) -> tuple[float, float]:
    parts = [p for p in text.replace(" ", "").split(",") if p]
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected START,END, got {text!r}")
    return float(parts[0]), float(parts[1])


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(p) for p in text.replace(" ", "").split(",") if p)


def add_request_flags(parser: argparse.ArgumentParser, task: str) -> None:
    """Add one flag per request field that `task` uses."""
    groups: dict[str, Any] = {}
    for name in fields_for(task):
        info = GenerationRequest.model_fields[name]
        extra = info.json_schema_extra or {}
        group = groups.get(extra["x-group"]) or groups.setdefault(extra["x-group"], parser.add_argument_group(extra["x-group"]))
        kind = _base_type(info.annotation)
        default = info.default
        help_text = info.description or ""
        bounds = _bounds_text(info)
        shown = "none" if default in (None, ()) else (list(default) if isinstance(default, tuple) else default)
        help_text += f" [{bounds}]" if bounds and bounds not in help_text else ""
        help_text += "" if "(default" in help_text else f" (default: {shown})"
        flags = (flag_name(name), *ALIASES.get(name, ()))
        common = dict(dest=name, default=argparse.SUPPRESS, help=help_text.replace("%", "%%"))
        if kind is bool:
            group.add_argument(*flags, action=argparse.BooleanOptionalAction, **common)
            continue
        if name == "cfg_interval":
            group.add_argument(*flags, type=_pair, metavar="START,END", **common)
        elif name == "timesteps":
            group.add_argument(*flags, type=_floats, metavar="T1,T2,…", **common)
        elif name == "tracks":
            group.add_argument(*flags, *(("--track",) if flags[0] != "--track" else ()), metavar="NAME[,NAME]", **common)
        else:
            choices = _choices(name)
            group.add_argument(*flags, type=kind if kind in (int, float) else str, choices=choices, **common)


def _choices(name: str) -> list[str] | None:
    from songstep.request import GUIDANCE, SOLVERS

    return {"solver": list(SOLVERS), "guidance_method": list(GUIDANCE)}.get(name)


def request_fields(args: argparse.Namespace, task: str) -> dict[str, Any]:
    """The request fields the user gave on the command line."""
    return {name: getattr(args, name) for name in fields_for(task) if hasattr(args, name)}


def request_to_argv(request: GenerationRequest) -> list[str]:
    """Command-line flags that rebuild `request`'s user-set fields (the inverse of the parser)."""
    argv: list[str] = []
    for name in sorted(request.model_fields_set - SKIP):
        value = getattr(request, name)
        if name not in fields_for(request.task) or value is None:
            continue
        flag = flag_name(name)
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, tuple):
            argv += [flag, ",".join(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv
