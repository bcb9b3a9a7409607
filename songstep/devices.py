"""Which torch device a user's `--device` / `device=` names, checked before any model loads."""

from __future__ import annotations

import torch

from songstep.errors import InvalidRequest

KNOWN = ("cpu", "cuda", "mps")


def resolve_device(name: str | torch.device | None) -> torch.device:
    """`None` → cuda when available, else cpu. Otherwise the named device, which must exist here:
    `InvalidRequest` (with the fix) for an unknown name (`gpu`), CUDA without a CUDA device or
    build, a CUDA index past the last GPU, or MPS where it is not available."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise InvalidRequest(f"unknown device {str(name)!r}; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise InvalidRequest(
                f"device {str(name)!r}: no CUDA GPU is usable (torch {torch.__version__}, {build}); "
                "use --device cpu, or install a CUDA build of torch and check the driver (nvidia-smi)"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise InvalidRequest(f"device {str(name)!r}: only {count} CUDA device(s) (cuda:0 … cuda:{count - 1})")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InvalidRequest(f"device {str(name)!r}: MPS is not available here (Apple silicon with macOS 12.3+ only); use --device cpu")
    elif device.type not in KNOWN:
        raise InvalidRequest(f"device {str(name)!r} is not supported; use cpu, cuda, cuda:N or mps")
    return device
