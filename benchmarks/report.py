"""results.json, results.md (the table, plus the acceptance-shaped summary at 240 s) and
results.png (time against song length, one panel per stage)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger("benchmarks")
COLUMNS = ("stage", "impl", "duration_s", "batch", "ms", "peak_mb", "floor_ms", "floor_ratio")


def write_json(rows: list[dict], meta: dict, out: Path) -> Path:
    path = out / "results.json"
    path.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return path


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _extra(r: dict) -> str:
    keys = ("tokens_per_s", "max_abs_err", "ref_abs_max", "gflop_per_step", "error")
    return ", ".join(f"{k}={_cell(r[k])}" for k in keys if r.get(k) is not None)


def _find(rows, stage, impl, duration, batch):
    for r in rows:
        if (r["stage"], r["impl"], r["duration_s"], r["batch"]) == (stage, impl, duration, batch) and r["ms"]:
            return r
    return None


def summary(rows: list[dict], steps: int) -> list[str]:
    """The issue's acceptance shapes (240 s song) where this run measured them."""
    lines = []
    for label, stage, impl, batch, factor in (
        (f"DiT turbo {steps} steps, batch 1", "dit", "songstep", 1, steps),
        (f"DiT turbo {steps} steps, batch 1 (diffusers)", "dit", "diffusers", 1, steps),
        (f"DiT turbo {steps} steps, batch 8", "dit", "songstep", 8, steps),
        ("DiT base 50 steps + CFG, batch 1 (50 × per-step)", "dit-cfg", "songstep", 1, 50),
        ("VAE decode (tiled), batch 1", "vae", "songstep-tiled", 1, 1),
        ("VAE decode (untiled), batch 1", "vae", "songstep-untiled", 1, 1),
        ("LM, batch 1", "lm", None, 1, 1),
        ("end to end without LM, batch 1", "e2e", "songstep", 1, 1),
        ("end to end with LM, batch 1", "e2e+lm", "songstep (LM + pipeline, summed)", 1, 1),
    ):
        r = _find(rows, stage, impl, 240, batch) if impl else next(
            (x for x in rows if x["stage"] == stage and x["duration_s"] == 240 and x["ms"]), None)
        if r is None:
            continue
        peak = "" if r["peak_mb"] is None else f", peak {r['peak_mb'] / 1024:.2f} GiB"
        floor = "" if r["floor_ms"] is None else f", floor {r['floor_ms'] * factor:,.1f} ms"
        lines.append(f"- {label}: {r['ms'] * factor:,.1f} ms{peak}{floor}")
    compiled = [r for r in rows if r["impl"].startswith("songstep-compiled") and r["duration_s"] == 240 and r["ms"]]
    for r in compiled:
        lines.append(f"- DiT compiled turbo {steps} steps, batch {r['batch']}: {r['ms'] * steps:,.1f} ms "
                     f"(max |Δ| vs eager {r['max_abs_err']:.3g} of {r['ref_abs_max']:.3g})")
    return lines


def write_markdown(rows: list[dict], meta: dict, out: Path) -> Path:
    lines = ["# songstep benchmark", "",
             f"Device: {meta['device']} ({meta['dtype']}); peaks {meta['peak_tflops']:.4g} TFLOP/s, "
             f"{meta['peak_tbps']:.4g} TB/s ({meta['peaks_source']}); {'tiny' if meta['tiny'] else 'full-size'} random "
             f"weights; DiT {meta['steps']} steps, {meta['enc_tokens']} encoder tokens.", "",
             "`ms`: per call (DiT: per step); `floor_ratio` = floor_ms / ms (1.0 = at the physical floor); "
             "`peak_mb`: peak allocated on the device (— on CPU).", ""]
    found = summary(rows, meta["steps"])
    if found:
        lines += ["## 240 s song", "", *found, ""]
    lines += ["## All rows", "", "| " + " | ".join(COLUMNS) + " | notes |", "|" + "---|" * (len(COLUMNS) + 1)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c)) for c in COLUMNS) + f" | {_extra(r)} |")
    path = out / "results.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_plot(rows: list[dict], out: Path) -> Path | None:
    try:
        import matplotlib
    except ImportError:
        log.warning("matplotlib is not installed (songstep[dev]); no results.png")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(dict.fromkeys(r["stage"] for r in rows))
    fig, axes = plt.subplots(1, len(stages), figsize=(4.2 * len(stages), 3.6), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        series: dict[str, list] = {}
        for r in rows:
            if r["stage"] == stage and r["ms"]:
                series.setdefault(f"{r['impl']} b{r['batch']}", []).append((r["duration_s"], r["ms"]))
        for label, points in series.items():
            flat = [ms for d, ms in points if d is None]
            if flat:
                ax.axhline(flat[0], label=label, linestyle="--")
            points = sorted(p for p in points if p[0] is not None)
            if points:
                ax.plot(*zip(*points), marker="o", label=label)
        ax.set(title=stage, xlabel="song length (s)", ylabel="ms" + (" per step" if stage.startswith("dit") else ""))
        ax.set_yscale("log")
        ax.legend(fontsize=6)
    fig.tight_layout()
    path = out / "results.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
