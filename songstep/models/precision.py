"""The compute dtype for a device, chosen once per device.

bf16 on CUDA GPUs whose tensor cores do bf16 natively (compute capability 8.0 and up: Ampere,
Ada, Hopper, Blackwell); fp32 on older GPUs (Turing, Volta, Pascal) and on every other device.
Never fp16: upstream's fp16 fallback overflows in the DiT and the VAE and produces NaN audio on
Turing and Pascal cards (its issue #1274). `torch.cuda.is_bf16_supported()` is not used for the
decision because by default it also answers True for emulated bf16, which runs on pre-Ampere
cards but slowly and without the fp32 range fix of native kernels.
"""

from __future__ import annotations

import functools

import torch

BF16_MIN_CAPABILITY = (8, 0)


@functools.cache
def _cuda_dtype(index: int) -> torch.dtype:
    if torch.cuda.get_device_capability(index) >= BF16_MIN_CAPABILITY:
        return torch.bfloat16
    return torch.float32


def compute_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on a CUDA device with native bf16, fp32 everywhere else."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.float32
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _cuda_dtype(index)


def describe(device: torch.device | str) -> dict:
    """What `songstep info` reports: the dtype and why."""
    device = torch.device(device)
    dtype = compute_dtype(device)
    info = {"dtype": str(dtype).removeprefix("torch.")}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        info["compute_capability"] = f"{major}.{minor}"
        info["reason"] = "native bf16" if dtype == torch.bfloat16 else "no native bf16 (before sm_80): fp32, never fp16"
    return info
