"""Precision by device: bf16 only on GPUs with native bf16, fp32 otherwise, never fp16; chosen
once per device and reported by `songstep info`."""

from __future__ import annotations

import json

import pytest
import torch

from songstep.loading.checkpoint import default_dtype
from songstep.models import precision


@pytest.fixture
def fake_gpu(monkeypatch):
    calls = []

    def install(capability):
        precision._cuda_dtype.cache_clear()
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

        def get_capability(index=None):
            calls.append(index)
            return capability

        monkeypatch.setattr(torch.cuda, "get_device_capability", get_capability)
        return calls

    yield install
    precision._cuda_dtype.cache_clear()


@pytest.mark.parametrize(("capability", "dtype"), [
    ((6, 1), torch.float32),  # Pascal
    ((7, 0), torch.float32),  # Volta
    ((7, 5), torch.float32),  # Turing: upstream's fp16 fallback gives NaN here
    ((8, 0), torch.bfloat16),  # Ampere
    ((8, 9), torch.bfloat16),  # Ada
    ((9, 0), torch.bfloat16),  # Hopper
])
def test_cuda_dtype_by_capability(fake_gpu, capability, dtype) -> None:
    fake_gpu(capability)
    assert precision.compute_dtype("cuda") is dtype
    assert default_dtype("cuda:0") is dtype
    assert precision.describe("cuda")["compute_capability"] == f"{capability[0]}.{capability[1]}"


def test_chosen_once_per_device(fake_gpu) -> None:
    calls = fake_gpu((7, 5))
    for _ in range(3):
        assert precision.compute_dtype("cuda:0") is torch.float32
    assert precision.compute_dtype("cuda") is torch.float32  # the current device, index 0
    assert calls == [0]


def test_cpu_is_fp32() -> None:
    assert precision.compute_dtype("cpu") is torch.float32
    assert default_dtype(torch.device("cpu")) is torch.float32
    assert precision.describe("cpu") == {"dtype": "float32"}


def test_info_reports_precision_and_tier(capsys) -> None:
    from songstep.cli import main

    assert main(["info", "--root", "nowhere"]) == 0
    info = json.loads(capsys.readouterr().out)
    expected = "float32" if info["device"] == "cpu" else str(precision.compute_dtype("cuda")).removeprefix("torch.")
    assert info["precision"]["dtype"] == expected
    assert {"name", "max_batch", "lm", "offload", "max_duration", "max_duration_lm"} <= info["tier"].keys()
