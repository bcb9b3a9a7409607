"""The memory policy on its own (no model): one retry with rewound generators, then a clear error;
the VAE decode's fallbacks in order."""

from __future__ import annotations

import contextlib

import pytest
import torch

from songstep.errors import OutOfMemory
from songstep.pipeline import memory

OOM = memory.OOM_ERRORS[0]


def test_retry_once_rewinds_generators_and_frees() -> None:
    g = torch.Generator().manual_seed(5)
    draws, freed = [], []

    def run():
        draws.append(torch.randn(3, generator=g))
        if len(draws) == 1:
            raise OOM("CUDA out of memory")
        return draws[-1]

    out = memory.retry_once(run, [g], lambda: freed.append(1) or 0, "lower the batch")
    assert torch.equal(out, draws[0]) and freed == [1]  # the retry drew the same noise


def test_second_failure_is_out_of_memory_with_advice() -> None:
    def run():
        raise OOM("CUDA out of memory")

    with pytest.raises(OutOfMemory, match="lower the batch"):
        memory.retry_once(run, [], lambda: 0, "lower the batch")


class _VAE:
    def __init__(self, failures: int) -> None:
        self.failures, self.calls, self.device = failures, [], torch.device("cpu")
        self.model = torch.nn.Linear(1, 1)

    def decode(self, latents, output_device=None, **tiles):
        self.calls.append((latents.shape[0], tiles.get("chunk_frames")))
        if len(self.calls) <= self.failures:
            raise OOM("CUDA out of memory")
        return torch.zeros(latents.shape[0], 2, 8)


class _Components:
    def __init__(self, vae) -> None:
        self.vae = vae

    @contextlib.contextmanager
    def on_device(self, name):
        yield


@pytest.mark.parametrize("failures,label", [(0, None), (1, "per take"), (2, "per take, 256-frame tiles"), (3, "cpu")])
def test_vae_fallbacks_in_order(failures, label) -> None:
    vae = _VAE(failures)
    freed = []
    wave, used = memory.vae_decode(_Components(vae), torch.zeros(2, 10, 64), lambda: freed.append(1) or 0)
    assert used == label and wave.shape == (2, 2, 8)
    assert vae.calls[0] == (2, None)  # the whole batch first
    if failures >= 1:
        assert vae.calls[1] == (1, None)  # then one take at a time
    assert len(freed) == min(failures, 3)
