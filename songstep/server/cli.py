"""`songstep serve`: the HTTP server on one loaded pipeline.

    songstep serve --model ./checkpoints --host 127.0.0.1 --port 8001 --data-dir ./songstep-data \
        --api-key "$KEY" --queue-size 200
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def add_common_flags(p: argparse.ArgumentParser, port: int) -> None:
    """The flags `songstep serve` and `songstep ui` share: the model to load, where to listen, the
    data folder and the API keys."""
    p.add_argument("--model", default="ACE-Step/Ace-Step1.5", help="checkpoints folder or hub repository")
    p.add_argument("--variant", default="turbo", help="DiT variant to load (turbo, base, sft, ...)")
    p.add_argument("--lm", default="auto", help="planner LM: auto, none, 0.6B, 1.7B, 4B or a folder")
    p.add_argument("--device", default=None, help="cuda, cpu, mps (default: cuda when available)")
    p.add_argument("--root", default="checkpoints", help="where hub downloads go")
    p.add_argument("--offline", action="store_true", help="never download")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=port)
    p.add_argument("--data-dir", default="songstep-data", help="job database, uploads and results")
    p.add_argument("--api-key", action="append", default=[], help="an accepted API key (repeatable)")
    p.add_argument("--api-keys-file", default=None, help="file with one key (or sha256:<hex>) per line")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback host without API keys")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="run the HTTP API server (upstream-compatible routes + /v2 job API)")
    add_common_flags(p, 8001)
    p.add_argument("--queue-size", type=int, default=200, help="queued jobs before submits get 429")
    p.add_argument("--on-restart", choices=("requeue", "fail"), default="requeue",
                   help="what happens to jobs a crash interrupted")
    p.add_argument("--max-attempts", type=int, default=2, help="runs a job may get across interruptions")
    p.add_argument("--keep-results", type=int, default=1000, help="finished jobs kept with their files")
    p.add_argument("--max-upload-mb", type=float, default=50.0)
    p.add_argument("--max-upload-seconds", type=float, default=600.0)
    p.add_argument("--request-timeout", type=float, default=60.0)
    p.add_argument("--job-timeout", type=float, default=3600.0)
    p.add_argument("--cors-origin", action="append", default=[], help="allow this browser origin (repeatable)")
    p.add_argument("--job-store", default="", help="job store URL: postgresql://... (shared by API replicas); "
                   "default: SQLite under --data-dir")
    p.add_argument("--backend", choices=("inprocess", "ray"), default="inprocess",
                   help="run jobs in this process, or on Ray Serve replicas (the [serve] extra)")
    p.add_argument("--ray-address", default="auto", help="with --backend ray: auto (join a cluster) or local")
    p.add_argument("--ray-config", default=None, help="with --backend ray: TOML/JSON file of serving options")
    p.add_argument("--ray-option", action="append", default=[], metavar="KEY=VALUE",
                   help="with --backend ray: one serving option, e.g. replicas=2, num_gpus=0.5 (repeatable)")
    p.set_defaults(func=run)
    return p


def settings_from_args(args: argparse.Namespace):
    from songstep.errors import InvalidRequest
    from songstep.server.settings import ServerSettings, is_loopback, key_hashes, read_keys_file

    keys = list(args.api_key)
    if os.environ.get("SONGSTEP_API_KEY"):
        keys.append(os.environ["SONGSTEP_API_KEY"])
    if args.api_keys_file:
        keys += read_keys_file(args.api_keys_file)
    if not keys and not is_loopback(args.host) and not args.insecure:
        raise InvalidRequest(f"refusing to listen on {args.host} without API keys: pass --api-key KEY "
                             "(or --api-keys-file), listen on 127.0.0.1, or add --insecure")
    return ServerSettings(
        data_dir=Path(args.data_dir), api_key_hashes=key_hashes(keys), queue_size=args.queue_size,
        on_restart=args.on_restart, max_attempts=args.max_attempts, keep_results=args.keep_results,
        max_upload_bytes=int(args.max_upload_mb * 2**20), max_upload_seconds=args.max_upload_seconds,
        request_timeout=args.request_timeout, job_timeout=args.job_timeout, cors_origins=tuple(args.cors_origin),
        job_store=getattr(args, "job_store", ""),
    )


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from songstep.server.app import create_app
    from songstep.server.logs import setup_logging

    settings = settings_from_args(args)
    setup_logging()

    def factory():
        from songstep.pipeline import Pipeline

        return Pipeline.from_pretrained(args.model, variant=args.variant, device=args.device, lm=args.lm,
                                        root=args.root, offline=args.offline)

    if getattr(args, "backend", "inprocess") == "ray":  # a plugin: songstep.serving sits above the server
        factory = importlib.import_module("songstep.serving.cli").pipeline_factory(args, settings)
    app = create_app(factory, settings)
    log.info("serving on http://%s:%d (data dir %s, %d API key(s))", args.host, args.port, settings.data_dir,
             len(settings.api_key_hashes))
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, timeout_keep_alive=5)
    return 0
