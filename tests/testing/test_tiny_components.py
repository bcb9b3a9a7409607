"""songstep.testing.tiny_components: official on-disk layouts, seeded, offline-loadable."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from songstep.config import tiny_config
from songstep.constants import ENDOFTEXT, HOP_LENGTH, LATENT_CHANNELS
from songstep.errors import InvalidRequest
from songstep.testing.tiny_components import (
    SPECIAL_TOKENS,
    write_silence_latent,
    write_tiny_text_encoder,
    write_tiny_vae,
)

VAE_WEIGHTS = "diffusion_pytorch_model.safetensors"


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_tiny_vae_layout_and_config(tmp_path):
    folder = write_tiny_vae(tmp_path / "vae", seed=0)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", VAE_WEIGHTS]
    config = json.loads((folder / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderOobleck"
    assert math.prod(config["downsampling_ratios"]) == HOP_LENGTH
    assert config["decoder_input_channels"] == LATENT_CHANNELS
    assert config["encoder_hidden_size"] == 2 * LATENT_CHANNELS
    assert config["audio_channels"] == 2 and config["sampling_rate"] == 48000


def test_tiny_vae_is_seeded_and_leaves_the_global_rng_alone(tmp_path):
    state = torch.get_rng_state()
    a = load_file(write_tiny_vae(tmp_path / "a", seed=1) / VAE_WEIGHTS)
    b = load_file(write_tiny_vae(tmp_path / "b", seed=1) / VAE_WEIGHTS)
    c = load_file(write_tiny_vae(tmp_path / "c", seed=2) / VAE_WEIGHTS)
    assert torch.equal(torch.get_rng_state(), state)
    assert _same_tensors(a, b) and not _same_tensors(a, c)
    assert any(k.endswith("weight_g") for k in a)  # weight-norm names, as the official file


def test_tiny_text_encoder_loads_offline_with_auto_classes(tmp_path):
    from transformers import AutoModel, AutoTokenizer

    folder = write_tiny_text_encoder(tmp_path / "Qwen3-Embedding-0.6B", seed=0)
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True)
    assert model.config.model_type == "qwen3"
    assert model.config.hidden_size == tiny_config().text_hidden_dim
    ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert ids == list(range(ids[0], ids[0] + 3))  # consecutive, like 151643..151645
    assert max(ids) < model.config.vocab_size
    assert tokenizer.pad_token == ENDOFTEXT
    assert tokenizer("abc")["input_ids"][-1] == ids[0]  # post-processor appends <|endoftext|>


def test_tiny_text_encoder_is_deterministic(tmp_path):
    state = torch.get_rng_state()
    a = write_tiny_text_encoder(tmp_path / "a", seed=3)
    b = write_tiny_text_encoder(tmp_path / "b", seed=3)
    c = write_tiny_text_encoder(tmp_path / "c", seed=4, hidden_size=64)
    assert torch.equal(torch.get_rng_state(), state)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    assert _same_tensors(load_file(a / "model.safetensors"), load_file(b / "model.safetensors"))
    assert json.loads((c / "config.json").read_text())["hidden_size"] == 64
    with pytest.raises(InvalidRequest):
        write_tiny_text_encoder(tmp_path / "d", hidden_size=30)


def test_silence_latent_file_format(tmp_path):
    path = write_silence_latent(tmp_path, seed=0, frames=1000)
    assert path == tmp_path / "silence_latent.pt"
    value = torch.load(path, weights_only=True)
    assert isinstance(value, torch.Tensor)
    assert value.shape == (1, LATENT_CHANNELS, 1000) and value.dtype == torch.float32
    again = torch.load(write_silence_latent(tmp_path / "x" / "s.pt", seed=0, frames=1000), weights_only=True)
    assert torch.equal(value, again)
    full = torch.load(write_silence_latent(tmp_path / "full.pt", seed=0), weights_only=True)
    assert full.shape == (1, LATENT_CHANNELS, 15000)
    for frames in (0, 15001):
        with pytest.raises(InvalidRequest):
            write_silence_latent(tmp_path / "bad.pt", frames=frames)
