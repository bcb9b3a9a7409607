"""`python -m benchmarks --out DIR`: every stage of songstep on random weights, beside diffusers'
DiT port, against each stage's physical floor.

    python -m benchmarks --out bench --tiny            # CPU, tiny random models, a minute or two
    python -m benchmarks --out bench --compile         # CUDA, full size (bf16 where native), every stage

Writes DIR/results.json (rows: stage, impl, duration_s, batch, ms, peak_mb, floor_ms, floor_ratio
and extras), DIR/results.md (the table and a 240 s summary), DIR/results.png (ms against song
length per stage) and DIR/meta.json (device, peaks). Stages: text (encoder), lm (planner: CoT +
codes of one song, tokens/s), dit (ms per step; songstep, songstep compiled, songstep int8,
diffusers), dit-cfg (the CFG batch), vae (decode), e2e (the pipeline without the LM) and
e2e+lm (e2e plus the LM at batch 1). See benchmarks/floors.py for the floors.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from benchmarks import report, stage_dit, stages, suite
from songstep.models import attention
from songstep.models.dit_compile import parse_compile, raise_recompile_limit

STAGES = ("text", "lm", "dit", "dit-cfg", "vae", "e2e")
log = logging.getLogger("benchmarks")


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tiny", action="store_true", help="tiny random models on the CPU in fp32")
    ap.add_argument("--device", default=None, help="default: cuda (full size), cpu (--tiny)")
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    ap.add_argument("--durations", nargs="+", type=float, default=[30, 120, 240, 600])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4, 8])
    ap.add_argument("--steps", type=int, default=8, help="DiT steps per timed loop (turbo: 8)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--lm-duration", type=float, default=240.0, help="song length of the LM row")
    ap.add_argument("--compile", nargs="?", const="auto", default=None, metavar="BACKEND",
                    help="add compiled DiT rows: auto (inductor on CUDA, aot_eager on CPU), a torch.compile mode "
                    "(reduce-overhead: CUDA graphs) or a backend")
    ap.add_argument("--attention", choices=("auto", "sdpa", "flex"), default="auto",
                    help="songstep's attention backend (auto: FlexAttention for sliding layers on CUDA)")
    ap.add_argument("--no-diffusers", dest="diffusers", action="store_false")
    ap.add_argument("--no-int8", dest="int8", action="store_false")
    ap.add_argument("--cfg-batches", nargs="+", type=int, default=None, help="batches of dit-cfg (default: --batches)")
    ap.add_argument("--include", type=Path, default=None, metavar="RESULTS_JSON",
                    help="rows of an earlier run to add (e.g. its lm rows, run in their own process)")
    ap.add_argument("--focus", nargs="*", default=None, metavar="SECONDSxBATCH",
                    help="shapes of the compiled/int8 rows (default: 240x1 240x8 full size, all on --tiny)")
    return ap.parse_args(argv)


def _focus(args, setup) -> set:
    if args.focus is None:
        specs = [] if setup.tiny else ["240x1", "240x8"]
    else:
        specs = args.focus
    shapes = set()
    for spec in specs:
        seconds, batch = spec.lower().split("x")
        shapes.add((float(seconds), int(batch)))
    return shapes


def collect(args, setup, write) -> list[dict]:
    """Every chosen stage in order; `write(rows)` after each, so a run cut short keeps its rows."""
    rows: list[dict] = []
    if args.include is not None and args.include.is_file():
        rows += json.loads(args.include.read_text(encoding="utf-8"))
    durations, batches, chosen = [float(d) for d in args.durations], args.batches, set(args.stages)
    impls = ("songstep", "diffusers") if args.diffusers else ("songstep",)
    timed = {}
    for stage in STAGES:
        if stage not in chosen:
            continue
        start = time.perf_counter()
        if stage == "text":
            rows += stages.text_rows(setup, batches)
        elif stage == "lm":
            rows += stages.lm_rows(setup, args.lm_duration)
        elif stage == "dit":
            rows += stage_dit.dit_rows(setup, durations, batches, stage, impls)
        elif stage == "dit-cfg":
            rows += stage_dit.dit_rows(setup, durations, args.cfg_batches or batches, stage, impls)
        elif stage == "vae":
            rows += stages.vae_rows(setup, durations, batches)
        else:
            rows += stages.e2e_rows(setup, durations, batches, stages.stage_floors(rows, setup.steps))
            rows += stages.with_lm_rows(rows)
        timed[stage] = round(time.perf_counter() - start, 1)
        log.info("%s done in %.1f s", stage, timed[stage])
        write(rows)
    return rows


def main(argv=None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    attention.set_backend(args.attention)
    raise_recompile_limit(128)  # FlexAttention compiles per sequence length: many shapes in one run
    setup = suite.build(args.tiny, args.device)
    setup.steps, setup.repeats, setup.quantize = args.steps, args.repeats, args.int8
    setup.focus_shapes = _focus(args, setup)
    if args.compile:
        auto = True if setup.device.type == "cuda" else "aot_eager"
        setup.compile_backend, setup.compile_mode = parse_compile(auto if args.compile == "auto" else args.compile)
    meta = {"device": setup.peaks.name, "dtype": str(setup.dtype).removeprefix("torch."), "tiny": setup.tiny,
            "peak_tflops": setup.peaks.flops / 1e12, "peak_tbps": setup.peaks.bandwidth / 1e12,
            "peaks_source": setup.peaks.source, "steps": setup.steps, "enc_tokens": setup.enc_tokens,
            "torch": torch.__version__, "compile": setup.compile_backend, "compile_mode": setup.compile_mode,
            "attention": args.attention}

    def write(rows: list[dict]) -> None:
        report.write_json(rows, meta, args.out)
        report.write_markdown(rows, meta, args.out)
        report.write_plot(rows, args.out)

    write(collect(args, setup, write))
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
