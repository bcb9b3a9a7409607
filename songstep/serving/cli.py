"""`songstep serve --backend ray`: the pipeline factory the server's CLI loads (by name) when the
Ray backend is chosen. The server's model flags (--model, --variant, --device, --root, --offline,
--lm) become the deployments' defaults; `--ray-config FILE` and `--ray-option KEY=VALUE` shape
them (replicas, num_gpus, max_batch, autoscale=MIN:MAX, lm_replicas, ...; see `ServingConfig`).

--lm: a size (0.6B, 1.7B, 4B) or a folder deploys the planner LM as its own pool; "auto" and
"none" deploy none (a replica's tier is not known before it starts)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from songstep.serving.config import ServingConfig, read_options


def config_from_args(args: argparse.Namespace) -> ServingConfig:
    base: dict[str, Any] = {"model": str(args.model), "variant": args.variant, "device": args.device,
                            "root": str(args.root), "offline": bool(args.offline),
                            "lm": "none" if args.lm in ("auto", "none", None) else str(args.lm)}
    base.update(read_options(getattr(args, "ray_config", None), list(getattr(args, "ray_option", []) or [])))
    return ServingConfig.from_options(base)


def pipeline_factory(args: argparse.Namespace, settings: Any) -> Callable[[], Any]:
    """The server's `pipeline_factory`: connect to Ray, deploy (or attach to) the application,
    and return its `RemotePipeline`."""
    from songstep.serving.backend import RayBackend

    config = config_from_args(args)
    backend = RayBackend(config, address=args.ray_address,
                         lm_max_new_tokens=getattr(settings, "lm_max_new_tokens", None))
    return backend.start
