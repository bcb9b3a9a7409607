"""Physical floors: the time a stage cannot beat on a device, from its FLOPs and the bytes it must
read, and the device's peak rates.

floor = max(FLOPs / peak FLOP/s, bytes / memory bandwidth). FLOPs are counted by
`torch.utils.flop_counter.FlopCounterMode` on one eager run at the measured shape (matmuls,
convolutions and attention; element-wise work is left out, so the floor is a lower bound); the
bytes are the weights read once per forward (for the LM: per token, plus its KV cache).

Peak numbers (dense bf16 tensor-core FLOP/s without sparsity, HBM bandwidth), from the vendors'
datasheets:

    H200 (SXM)        989 TFLOP/s   4.8 TB/s
    H100 SXM          989 TFLOP/s   3.35 TB/s
    H100 NVL          835 TFLOP/s   3.9 TB/s
    H100 PCIe         756 TFLOP/s   2.0 TB/s
    A100 80GB SXM     312 TFLOP/s   2.04 TB/s   (40GB: 1.56 TB/s)
    L40S              362 TFLOP/s   0.864 TB/s
    RTX 4090          165 TFLOP/s   1.01 TB/s
    L4                121 TFLOP/s   0.3 TB/s

On any other device (the CPU of `--tiny`, GPUs not listed, fp32 runs) the peaks are measured: the
best of a few large matmuls in the run's dtype and of a large device copy. Those floors are what
this machine's own kernels reach at best, not a datasheet bound.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

# (substring of torch.cuda.get_device_name, dense bf16 FLOP/s, bytes/s): first match wins
DATASHEET = (
    ("H200", 989e12, 4.8e12),
    ("H100 NVL", 835e12, 3.9e12),
    ("H100 PCIe", 756e12, 2.0e12),
    ("H100", 989e12, 3.35e12),
    ("A100-SXM4-80GB", 312e12, 2.039e12),
    ("A100 80GB", 312e12, 2.039e12),
    ("A100", 312e12, 1.555e12),
    ("L40S", 362e12, 0.864e12),
    ("RTX 4090", 165e12, 1.008e12),
    ("L4", 121e12, 0.3e12),
)


@dataclass(frozen=True)
class Peaks:
    name: str
    flops: float  # FLOP/s
    bandwidth: float  # bytes/s
    source: str  # "datasheet" | "measured"

    def floor_ms(self, flops: float, nbytes: float = 0.0) -> float:
        return max(flops / self.flops, nbytes / self.bandwidth) * 1e3


def device_peaks(device: torch.device, dtype: torch.dtype) -> Peaks:
    if device.type == "cuda" and dtype == torch.bfloat16:
        name = torch.cuda.get_device_name(device)
        for key, flops, bandwidth in DATASHEET:
            if key in name:
                return Peaks(name, flops, bandwidth, "datasheet")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return Peaks(name, *measure_peaks(device, dtype), "measured")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best(fn, device: torch.device, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def measure_peaks(device: torch.device, dtype: torch.dtype) -> tuple[float, float]:
    """(FLOP/s, bytes/s) this device reaches on a square matmul and a large copy."""
    n = 4096 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    flops = 2 * n**3 / _best(lambda: a @ b, device, 5)
    src = torch.empty(64 * 2**20 if device.type == "cuda" else 8 * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() / _best(lambda: dst.copy_(src), device, 5)  # read + write
    return flops, bandwidth


def count_flops(fn) -> int:
    """FLOPs of one call of `fn` (run eagerly once)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def weight_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())
