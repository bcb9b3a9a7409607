"""Device names → torch devices, with one-line errors that say how to fix them."""

from __future__ import annotations

import torch

from songstep.errors import InvalidRequest


def resolve_device(name: str | torch.device | None) -> torch.device:
    """None → cuda when available, else cpu. 'gpu' is an alias of 'cuda'. A device this torch build
    or this machine lacks is an `InvalidRequest` naming the fix, never blamed on a file."""
    if isinstance(name, torch.device):
        return name
    if name is None or name == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = str(name).strip().lower()
    text = "cuda" + text[3:] if text.startswith("gpu") else text
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise InvalidRequest(f"unknown device {name!r}; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise InvalidRequest("--device cuda: this torch build has no CUDA; install a CUDA build of torch "
                                 "(see docs/USER_GUIDE.md) or use --device cpu")
        if not torch.cuda.is_available():
            raise InvalidRequest("--device cuda: no CUDA GPU is visible (check the driver and CUDA_VISIBLE_DEVICES) "
                                 "or use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidRequest(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise InvalidRequest("--device mps: MPS is not available (needs Apple silicon and a torch build with MPS); "
                                 "use --device cpu")
    elif device.type != "cpu":
        raise InvalidRequest(f"unsupported device {name!r}; use cpu, cuda, cuda:N or mps")
    return device
