"""Songs per minute against synthesizer replica count, on Ray Serve with dynamic batching.

    python benchmarks/serve_throughput.py --tiny --replicas 1 2 --jobs 24           # CPU, tiny tree
    python benchmarks/serve_throughput.py --model ./checkpoints --num-gpus 0.5 --replicas 1 2 4

Each point deploys the synthesizer with that many replicas, sends `--jobs` text2music requests at
once through the deployment handle (the path the REST server's Ray backend uses), and times them
until the last one returns. Prints one JSON line per point (songs/min, batch sizes seen) and, with
matplotlib installed, writes a plot next to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(config, jobs: int, duration: float) -> dict:
    from ray import serve

    from songstep.serving.deployments import build_app

    handle = serve.run(build_app(config), name=config.app_name, route_prefix=None)
    warm = [handle.generate.remote({"fields": {"caption": "warm", "duration": duration, "seed": i}, "options": {}})
            for i in range(config.replicas * 2)]
    for w in warm:
        w.result()
    started = time.perf_counter()
    responses = [handle.generate.remote({"fields": {"caption": "bench", "duration": duration, "seed": i},
                                         "options": {}}) for i in range(jobs)]
    outs = [r.result() for r in responses]
    seconds = time.perf_counter() - started
    serve.delete(config.app_name)
    errors = [o["error"] for o in outs if "error" in o]
    if errors:
        raise RuntimeError(errors[0])
    return {"replicas": config.replicas, "num_gpus": config.num_gpus, "jobs": jobs, "song_seconds": duration,
            "wall_s": round(seconds, 2), "songs_per_min": round(60 * jobs / seconds, 2),
            "batch_sizes": dict(sorted(Counter(o["batch_size"] for o in outs).items())),
            "replicas_used": len({o["replica"] for o in outs})}


def plot(rows: list[dict], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["replicas"] for r in rows], [r["songs_per_min"] for r in rows], "o-")
    ax.set_xlabel("synthesizer replicas")
    ax.set_ylabel("songs per minute")
    ax.set_title(f"{rows[0]['song_seconds']:g} s songs, {rows[0]['jobs']} concurrent jobs")
    ax.set_xticks([r["replicas"] for r in rows])
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny random checkpoint tree (CPU)")
    parser.add_argument("--model", default=None, help="checkpoints folder (not with --tiny)")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per song")
    parser.add_argument("--num-gpus", type=float, default=0.0, help="per replica (fractional shares a GPU)")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="per replica")
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--ray-cpus", type=int, default=None, help="CPUs of the local Ray instance")
    parser.add_argument("--out", default="serve_throughput.json")
    args = parser.parse_args()

    import ray

    from songstep.serving.config import ServingConfig

    model = args.model
    if args.tiny:
        from songstep.testing.tiny import write_tiny_tree

        model = str(write_tiny_tree(Path(tempfile.mkdtemp()) / "tiny", seed=0))
    if not model:
        parser.error("give --model or --tiny")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # one machine: every Ray server on 127.0.0.1
    ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
    rows = []
    for n in args.replicas:
        config = ServingConfig(model=model, replicas=n, num_gpus=args.num_gpus, num_cpus=args.num_cpus,
                               max_batch=args.max_batch, batch_wait_s=0.05)
        rows.append(measure(config, args.jobs, args.duration))
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.write_text(json.dumps(rows, indent=1))
    picture = plot(rows, out.with_suffix(".png"))
    print(json.dumps({"results": str(out), "plot": str(picture) if picture else None}))
    ray.shutdown()


if __name__ == "__main__":
    main()
