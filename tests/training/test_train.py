"""LoRA training on the tiny model: the loss falls, resume continues exactly, the adapter loads
into a fresh pipeline and changes its output, scale 0 / disabled equal no adapter bit for bit."""

from __future__ import annotations

import csv
import json
import random
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from songstep.pipeline import Pipeline
from songstep.training import lora_train as lt
from songstep.training.lora_train import TrainConfig
from songstep.training.trainer import train
from tests.training.conftest import TRAIN

pytest.importorskip("peft")  # the [train] extra


def test_thirty_cpu_steps_lower_the_loss(trained) -> None:
    losses = trained.losses
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert np.mean(losses[-10:]) < 0.9 * np.mean(losses[:10])


def test_outputs_log_and_checkpoints(trained) -> None:
    out = trained.output
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    with (out / "train_log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    assert [float(r["loss"]) for r in rows] == pytest.approx(trained.losses, rel=1e-5)
    assert float(rows[-1]["eta_seconds"]) == 0.0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000010", "step-000020", "step-000030"]
    keys = load_file(str(out / "adapter_model.safetensors"))
    assert "base_model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.layers.0.cross_attn.o_proj.lora_B.weight" in keys
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4


def test_resume_continues_at_the_saved_step_with_equal_state(tiny_tree, dataset_dir, trained, tmp_path) -> None:
    (tmp_path / "checkpoints").mkdir()
    shutil.copytree(trained.output / "checkpoints" / "step-000010", tmp_path / "checkpoints" / "step-000010")
    shutil.copy(trained.output / "train_log.csv", tmp_path / "train_log.csv")
    resumed = train(tiny_tree, dataset_dir, tmp_path, TrainConfig(**TRAIN), device="cpu", resume=True)
    assert resumed.start_step == 10 and len(resumed.losses) == 20
    assert resumed.losses == trained.losses[10:]
    for name in ("adapter_model.safetensors", "optimizer.safetensors"):
        a = load_file(str(trained.output / "checkpoints" / "step-000030" / name))
        b = load_file(str(tmp_path / "checkpoints" / "step-000030" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state_a = json.loads((trained.output / "checkpoints" / "step-000030" / "state.json").read_text())
    state_b = json.loads((tmp_path / "checkpoints" / "step-000030" / "state.json").read_text())
    assert state_a == state_b and state_a["step"] == 30
    with (tmp_path / "train_log.csv").open() as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 31))


def test_resume_without_checkpoint_is_an_error(tiny_tree, dataset_dir, tmp_path) -> None:
    from songstep.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="nothing to resume"):
        train(tiny_tree, dataset_dir, tmp_path, TrainConfig(**TRAIN), device="cpu", resume=True)


def test_adapter_in_a_fresh_pipeline(tiny_tree, trained) -> None:
    pipe = Pipeline.from_pretrained(tiny_tree, variant="turbo", device="cpu", lm="none")
    kw = dict(duration=10, seed=3, steps=4)
    plain = pipe.generate("synth", **kw)
    name = pipe.load_lora(trained.output)
    adapted = pipe.generate("synth", **kw)
    assert (adapted.latents - plain.latents).abs().max() > 1e-3
    pipe.set_lora_scale(0.0)
    assert torch.equal(pipe.generate("synth", **kw).audio, plain.audio)
    pipe.set_lora_scale(1.0)
    assert torch.equal(pipe.generate("synth", **kw).audio, adapted.audio)
    pipe.disable_lora()
    assert torch.equal(pipe.generate("synth", **kw).audio, plain.audio)
    pipe.enable_lora(name)
    assert pipe.lora_status() == [{"name": name, "path": str(trained.output), "kind": "lora", "scale": 1.0, "enabled": True}]
    pipe.unload_lora()
    assert pipe.lora_status() == [] and torch.equal(pipe.generate("synth", **kw).audio, plain.audio)


def test_nan_loss_stops_naming_step_and_song(tiny_tree, dataset_dir, tmp_path) -> None:
    data = tmp_path / "data"
    shutil.copytree(dataset_dir, data)
    for shard in sorted((data / "items").glob("*.safetensors")):
        tensors = load_file(str(shard))
        tensors["target_latents"][0, 0] = float("nan")
        save_file(tensors, str(shard), metadata={"fingerprint": "x"})
    with pytest.raises(lt.NonFiniteLoss, match=r"at step 1, micro-batch 0 \(songs: song\d-"):
        train(tiny_tree, data, tmp_path / "out", TrainConfig(**TRAIN), device="cpu")


def test_timestep_sampling_and_schedule() -> None:
    gen = torch.Generator().manual_seed(0)
    turbo = TrainConfig().resolved(is_turbo=True)
    assert turbo.timesteps == "turbo" and turbo.cfg_dropout == 0.0
    t = lt.sample_t(4000, turbo, gen)
    allowed = torch.tensor([1.0, 0.9545454545, 0.9, 0.8333333333, 0.75, 0.6428571429, 0.5, 0.3])
    assert torch.isclose(t[:, None], allowed[None], atol=1e-6).any(dim=1).all()
    assert len(torch.unique(t)) == 8
    base = TrainConfig().resolved(is_turbo=False)
    assert base.timesteps == "logit-normal" and base.cfg_dropout == 0.15
    t = lt.sample_t(20000, base, gen)
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean().item() + 0.4) < 0.03 and abs(logit.std().item() - 1.0) < 0.03
    cfg = TrainConfig(steps=1000, warmup_steps=100)
    assert lt.lr_factor(0, cfg) == pytest.approx(0.01) and lt.lr_factor(99, cfg) == 1.0
    assert lt.lr_factor(100, cfg) == 1.0 and lt.lr_factor(999, cfg) == pytest.approx(0.0, abs=1e-4)


def test_adamw8bit_without_bitsandbytes_is_a_clear_error() -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        from songstep.errors import InvalidRequest

        with pytest.raises(InvalidRequest, match="needs bitsandbytes"):
            lt.make_optimizer([torch.nn.Parameter(torch.zeros(2))], TrainConfig(optimizer="adamw8bit"))
    else:
        pytest.skip("bitsandbytes is installed")


def test_gradient_checkpointing_gives_the_same_loss_and_grads(tiny_tree, dataset_dir) -> None:
    from songstep.training.dataset import load_dataset
    from songstep.training.trainer import attach, load_model

    data = load_dataset(dataset_dir)
    cfg = TrainConfig(rank=4, dropout=0.0).resolved(True)
    results = []
    for checkpointing in (False, True):
        dit, silence = load_model(tiny_tree, "turbo", torch.device("cpu"))
        params = attach(dit, cfg)
        if checkpointing:
            lt.enable_checkpointing(dit)
        with torch.no_grad():
            for p in params:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(p.numel()))
        batch = lt.collate([data[0][1]], None, random.Random(0), "cpu")
        loss = lt.flow_loss(dit, silence, batch, cfg, torch.Generator().manual_seed(1))
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in params]))
    assert torch.allclose(results[0][0], results[1][0])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(results[0][1], results[1][1]))


def test_a_bf16_base_model_trains_with_fp32_adapter_weights(dataset_dir) -> None:
    """The CUDA setting (frozen bf16 base, fp32 adapter) on the CPU: dtypes line up, grads flow."""
    from songstep.testing.tiny import tiny_dit
    from songstep.training.dataset import load_dataset
    from songstep.training.trainer import attach

    dit = tiny_dit(0, dtype=torch.bfloat16)
    cfg = TrainConfig(rank=4).resolved(True)
    params = attach(dit, cfg)
    assert all(p.dtype == torch.float32 for p in params)
    data = load_dataset(dataset_dir)
    batch = lt.collate([data[0][1], data[1][1]], None, random.Random(0), "cpu")
    silence = torch.zeros(100, 64)
    loss = lt.flow_loss(dit, silence, batch, cfg, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    assert all(p.grad is not None for p in params) and any(p.grad.abs().sum() > 0 for p in params)


def test_batches_and_accumulation_cover_each_song_once_per_epoch(tiny_tree, dataset_dir, tmp_path) -> None:
    cfg = TrainConfig(steps=2, rank=2, batch_size=2, grad_accum=2, save_every=5, max_frames=8)
    seen = [i for step in range(2) for micro in range(2) for i in lt.batch_indices(4, step, cfg, micro)]
    assert sorted(seen[:4]) == [0, 1, 2, 3] and sorted(seen[4:]) == [0, 1, 2, 3] and seen[:4] != seen[4:]
    result = train(tiny_tree, dataset_dir, tmp_path, cfg, device="cpu")
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000002"]
