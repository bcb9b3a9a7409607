"""`songstep ui`: the Gradio web UI on one loaded pipeline.

    songstep ui --model ./checkpoints                      # http://127.0.0.1:7860
    songstep ui --model ./checkpoints --api                # + the REST routes on the same port
    songstep ui --model ./checkpoints --host 0.0.0.0 --api-key "$KEY"

Listening on a non-loopback host needs API keys (the server's rule and flags): the UI then asks
for a login whose password is a key, and the REST routes (with `--api`) need a key as usual.
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("ui", help="run the web UI (Gradio; --api also serves the REST routes)")
    from songstep.server.cli import add_common_flags

    add_common_flags(p, 7860)
    p.add_argument("--share", action="store_true", default=False,
                   help="also open a public gradio.live link (off by default)")
    p.add_argument("--api", action="store_true", help="also serve the REST API routes on the same port")
    p.add_argument("--lang", choices=("en", "zh", "ja"), default="en", help="label language")
    p.add_argument("--queue-size", type=int, default=200, help="queued jobs before new ones are refused")
    p.set_defaults(func=run, on_restart="requeue", max_attempts=2, keep_results=1000, max_upload_mb=50.0,
                   max_upload_seconds=600.0, request_timeout=60.0, job_timeout=3600.0, cors_origin=[])
    return p


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from songstep.errors import InvalidRequest
    from songstep.pipeline import Pipeline
    from songstep.server.cli import settings_from_args
    from songstep.server.logs import setup_logging
    from songstep.ui.app import create_ui_app

    settings = settings_from_args(args)  # refuses a non-loopback host without keys
    if args.share and args.api:
        raise InvalidRequest("--share cannot be combined with --api (a public link would expose the REST routes)")
    setup_logging()
    pipe = Pipeline.from_pretrained(args.model, variant=args.variant, device=args.device, lm=args.lm,
                                    root=args.root, offline=args.offline)
    if args.share:
        return _share(pipe, settings, args)
    app = create_ui_app(pipe, settings, api=args.api, lang=args.lang, auth_hashes=settings.api_key_hashes)
    log.info("UI on http://%s:%d%s", args.host, args.port, " (with the REST API)" if args.api else "")
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, timeout_keep_alive=5)
    return 0


def _share(pipe, settings, args) -> int:
    """`--share`: Gradio's own launcher (it opens the public tunnel), same UI and job service."""
    import asyncio

    from songstep.ui.app import SongstepUI, key_login
    from songstep.ui.jobs import Jobs, host_app

    host = host_app(pipe, settings, api=False)
    lifespan = host.router.lifespan_context(host)
    asyncio.run(lifespan.__aenter__())  # starts the job service and its worker thread
    blocks = SongstepUI(Jobs(host, pipe), args.lang).build()
    blocks.launch(server_name=args.host, server_port=args.port, share=True, allowed_paths=[str(settings.data_dir)],
                  auth=key_login(settings.api_key_hashes))
    return 0

