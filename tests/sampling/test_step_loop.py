"""The DiT step loop's shape of work: each condition's cross-attention K/V once per request, one
decoder call per step with the CFG rows batched, and no tensor-to-host conversion inside the loop
(on CUDA each would be a stream sync; `benchmarks/sync_check.py` counts the real ones there)."""

from __future__ import annotations

import pytest
from torch.utils._python_dispatch import TorchDispatchMode

import songstep.sampling.dit as sampling_dit
from songstep.pipeline import Pipeline

SYNCING = {"aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero", "aten::equal"}


class SyncOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in SYNCING:
            self.seen.append(func._schema.name)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def counted(monkeypatch):
    report = {"syncs": [], "cross_kv": 0, "rows": [], "in_loop": False}

    def install(pipe: Pipeline):
        decoder = pipe.components.dit.decoder
        original_sample, original_kv, original_forward = sampling_dit.sample, decoder.cross_kv, decoder.forward

        original_call = sampling_dit.DiTVelocity.__call__
        mode = SyncOps()

        def call(self, *args, **kwargs):  # the loop starts at the first velocity evaluation
            if not report["in_loop"]:
                mode.__enter__()
                report["in_loop"] = True
            return original_call(self, *args, **kwargs)

        def sample(*args, **kwargs):
            try:
                return original_sample(*args, **kwargs)
            finally:
                if report["in_loop"]:
                    mode.__exit__(None, None, None)
                    report["in_loop"] = False
                report["syncs"] += mode.seen

        def cross_kv(*args, **kwargs):
            report["cross_kv"] += 1
            return original_kv(*args, **kwargs)

        def forward(x, *args, **kwargs):
            report["rows"].append(int(x.shape[0]))
            return original_forward(x, *args, **kwargs)

        monkeypatch.setattr(sampling_dit, "sample", sample)
        monkeypatch.setattr(sampling_dit.DiTVelocity, "__call__", call)
        monkeypatch.setattr(decoder, "cross_kv", cross_kv, raising=False)
        monkeypatch.setattr(decoder, "forward", forward, raising=False)
        return report

    return install


@pytest.mark.parametrize(("variant", "kwargs", "rows"), [
    ("turbo", {}, 2),
    ("base", {"guidance": 4.0}, 4),  # conditional + unconditional rows in one call
    ("base", {"guidance": 4.0, "solver": "heun"}, 4),
    ("base", {"guidance": 4.0, "method": "sde"}, 4),
])
def test_step_loop(tiny_tree, counted, variant, kwargs, rows) -> None:
    pipe = Pipeline.from_pretrained(tiny_tree, variant=variant, device="cpu", lm="none")
    report = counted(pipe)
    steps = 6
    pipe.generate("synth pop", "[verse]\nla la", duration=10, seed=3, steps=steps, batch=2, **kwargs)
    assert report["syncs"] == []
    assert report["cross_kv"] == 1
    assert set(report["rows"]) == {rows}
    if kwargs.get("solver") == "heun":  # a corrector evaluation on the steps before the last
        assert steps < len(report["rows"]) <= 2 * steps
    else:
        assert len(report["rows"]) == steps
