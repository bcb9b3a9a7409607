"""A tiny LoRA dataset (four short synthetic songs) and one 30-step training run, shared by the
training tests (the tiny VAE runs at 48 kHz, so the clips are short)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

CLIP_SECONDS = 0.8
MIN_SECONDS = 0.5


def write_tone(path, seconds: float, freq: float, sr: int = 48000) -> None:
    t = np.arange(int(sr * seconds)) / sr
    left = 0.3 * np.sin(2 * np.pi * freq * t)
    right = 0.3 * np.sin(2 * np.pi * 1.5 * freq * t)
    sf.write(path, np.stack([left, right], axis=1).astype(np.float32), sr)


@pytest.fixture(scope="session")
def song_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("songs")
    for i in range(4):
        write_tone(folder / f"song{i}.wav", CLIP_SECONDS, 220.0 * (i + 1))
        (folder / f"song{i}.txt").write_text(f"[verse]\nla la la {i}\n", encoding="utf-8")
    (folder / "song1.json").write_text('{"caption": "bright synth pop", "bpm": 120}', encoding="utf-8")
    (folder / "metadata.csv").write_text("file,caption,keyscale\nsong2.wav,dark ambient drone,A minor\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def fp32_pipe(tiny_tree):
    from songstep.pipeline import Pipeline

    return Pipeline.from_pretrained(tiny_tree, variant="turbo", device="cpu", dtype=torch.float32, lm="none")


@pytest.fixture(scope="session")
def dataset_dir(fp32_pipe, song_dir, tmp_path_factory):
    from songstep.training.dataset import build

    out = tmp_path_factory.mktemp("dataset")
    report = build(fp32_pipe, song_dir, out, min_seconds=MIN_SECONDS)
    assert report.done == 4 and not report.skipped
    return out


TRAIN = dict(steps=30, rank=4, alpha=4.0, lr=1e-2, warmup_steps=0, save_every=10, dropout=0.1)


@pytest.fixture(scope="session")
def trained(tiny_tree, dataset_dir, tmp_path_factory):
    from songstep.training.lora_train import TrainConfig
    from songstep.training.trainer import train

    out = tmp_path_factory.mktemp("adapter")
    return train(tiny_tree, dataset_dir, out, TrainConfig(**TRAIN), device="cpu")
