"""The memory policy of a run: what happens when the GPU runs out of memory.

- The DiT and VAE of one take set: on an out-of-memory error, free what can be freed (the planner
  LM's KV cache, the allocator's cache) and retry once with every generator's state restored, so
  the same seeds give the same audio; a second failure is `OutOfMemory` saying what to change.
- The VAE decode degrades instead of failing (users' most common complaint upstream): the whole
  batch with the default tiles, then one take at a time, then one take at a time with 256-frame
  tiles (same 64-frame overlap, so the same audio up to float rounding), then on the CPU. The
  fallback used is recorded in the take's parameters.
Releasing or offloading idle components between stages is `Components.on_device`'s job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from songstep.errors import OutOfMemory

log = logging.getLogger(__name__)

OOM_ERRORS = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),)  # torch.OutOfMemoryError: ≥ 2.5
VAE_ATTEMPTS = ((None, {}), ("per take", {}), ("per take, 256-frame tiles", {"chunk_frames": 256}))


def free_memory(planner, device: torch.device) -> int:
    """Free GPU memory held between runs; returns the bytes of planner KV cache freed."""
    freed = planner.release() if planner is not None else 0
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return freed


def retry_once(run: Callable[[], Any], generators: list[torch.Generator], free: Callable[[], int], advice: str) -> Any:
    """`run()`; out of memory, `free()` and run again with the generators rewound."""
    states = [g.get_state() for g in generators]
    try:
        return run()
    except OOM_ERRORS:
        log.warning("out of GPU memory; freed %.2f GiB of planner KV cache and retrying once", free() / 2**30)
    for g, state in zip(generators, states):
        g.set_state(state)
    try:
        return run()
    except OOM_ERRORS as exc:
        raise OutOfMemory(advice) from exc


def vae_decode(components, latents: torch.Tensor, free: Callable[[], int],
               progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, str | None]:
    """Decode with the fallbacks above. Returns the wave and, when a fallback was used, which one."""
    c = components
    for label, tiles in VAE_ATTEMPTS:
        try:
            with c.on_device("vae"):
                if label is None:
                    return c.vae.decode(latents, output_device="cpu", progress=progress), None
                parts = [c.vae.decode(z[None], output_device="cpu", **tiles) for z in latents]
                return torch.cat(parts), label
        except OOM_ERRORS:
            log.warning("VAE decode out of GPU memory (%s); freeing memory and trying smaller pieces", label or "batch")
            free()
    log.warning("VAE decode out of GPU memory; decoding on the CPU (slow)")
    device = c.vae.device
    c.vae.model.to("cpu")
    try:
        return c.vae.decode(latents, output_device="cpu", progress=progress), "cpu"
    finally:
        c.vae.model.to(device)
