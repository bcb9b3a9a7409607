"""Host syncs in the DiT step loop, counted by CUDA's sync debug mode.

    python benchmarks/sync_check.py               # CUDA: tiny random tree on the GPU
    python benchmarks/sync_check.py --device cpu  # smoke run (CPU has no syncs to count)

Generates with the tiny tree (turbo 8 steps; base 8 steps with CFG) while
`torch.cuda.set_sync_debug_mode("warn")` is on only inside the sampler loop, and prints one JSON
object per variant: synchronizing calls seen (each with the source line that made it), cross-
attention K/V computations and decoder calls per request, and rows per decoder call.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import traceback
import warnings
from pathlib import Path

import torch

import songstep.sampling.dit as sampling_dit
from songstep.pipeline import Pipeline
from songstep.testing.tiny import write_tiny_tree


@contextlib.contextmanager
def counting(pipe: Pipeline, report: dict):
    decoder = pipe.components.dit.decoder
    original_sample, original_kv, original_forward = sampling_dit.sample, decoder.cross_kv, decoder.forward

    def sample(*args, **kwargs):
        cuda = torch.cuda.is_available()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            if cuda:
                torch.cuda.set_sync_debug_mode("warn")
            try:
                return original_sample(*args, **kwargs)
            finally:
                if cuda:
                    torch.cuda.set_sync_debug_mode("default")
                report["syncs"] += [str(w.message)[:160] + f" @ {Path(w.filename).name}:{w.lineno}" for w in seen
                                    if "synchroniz" in str(w.message)]

    def cross_kv(*args, **kwargs):
        report["cross_kv_calls"] += 1
        return original_kv(*args, **kwargs)

    def forward(x, *args, **kwargs):
        report["decoder_calls"] += 1
        report["rows_per_call"].add(int(x.shape[0]))
        return original_forward(x, *args, **kwargs)

    sampling_dit.sample = sample
    decoder.cross_kv, decoder.forward = cross_kv, forward
    try:
        yield report
    finally:
        sampling_dit.sample = original_sample
        del decoder.cross_kv, decoder.forward


def check(pipe: Pipeline, variant: str, guidance: float | None, batch: int) -> dict:
    report = {"variant": variant, "batch": batch, "guidance": guidance, "syncs": [], "cross_kv_calls": 0,
              "decoder_calls": 0, "rows_per_call": set()}
    pipe.generate("warm-up", "", duration=10, seed=0, steps=2, guidance=guidance)
    with counting(pipe, report):
        pipe.generate("synth pop", "[verse]\nla la", duration=30, seed=1, steps=8, batch=batch, guidance=guidance)
    report["rows_per_call"] = sorted(report["rows_per_call"])
    report["sync_count"] = len(report["syncs"])
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    root = write_tiny_tree(Path(tempfile.mkdtemp()) / "tiny", lm=False)
    for variant, guidance in (("turbo", None), ("base", 4.0)):
        try:
            pipe = Pipeline.from_pretrained(root, variant=variant, device=args.device, lm="none")
            print(json.dumps(check(pipe, variant, guidance, batch=2)), flush=True)
        except Exception:  # report and go on to the next variant
            print(json.dumps({"variant": variant, "error": traceback.format_exc()[-800:]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
