"""The diffusers layout end to end: a tiny repository in the layout diffusers' conversion script
writes (`model_index.json`, `transformer/`, `condition_encoder/`, `audio_tokenizer/`,
`audio_token_detokenizer/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`), built here with
diffusers' own classes and `AceStepPipeline.save_pretrained` from the official tiny tree, runs
`songstep generate`, `cover` and `info --model` through the real CLI and gives the same samples as
the official tree it came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

diffusers = pytest.importorskip("diffusers")
sf = pytest.importorskip("soundfile")

from diffusers import AutoencoderOobleck, FlowMatchEulerDiscreteScheduler  # noqa: E402
from diffusers.pipelines.ace_step import AceStepPipeline  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

from songstep.cli import main  # noqa: E402
from songstep.config import DiTConfig  # noqa: E402
from songstep.loading.checkpoint import load_dit  # noqa: E402
from songstep.loading.diffusers_export import save_diffusers, write_extra_fields  # noqa: E402
from songstep.models.vae import load_silence_latent  # noqa: E402
from songstep.pipeline.components import describe_model  # noqa: E402
from tests.loading.test_diffusers_map import diffusers_components, to_diffusers  # noqa: E402

TURBO = "acestep-v15-turbo"
FOLDERS = ("model_index.json", "transformer", "condition_encoder", "audio_tokenizer", "audio_token_detokenizer",
           "vae", "text_encoder", "tokenizer", "scheduler")


def build_diffusers_tree(official: Path, out: Path) -> Path:
    """diffusers' classes filled with the official tiny turbo DiT's tensors through the test's own
    hand-written key map (not the library's), the silence latent baked into the condition encoder as
    diffusers' converter does, saved with `AceStepPipeline.save_pretrained`; then the config field
    the diffusers layout has no place for (`timbre_fix_frame`, 30 in the tiny profile) as an
    extra key."""
    cfg = DiTConfig.from_file(official / TURBO / "config.json")
    comps = diffusers_components(cfg, seed=0)  # random values, all overwritten below
    theirs = {folder: {} for folder in comps}
    for key, value in load_file(str(official / TURBO / "model.safetensors")).items():
        folder, dkey = to_diffusers(key)
        theirs[folder][dkey] = value.float()
    theirs["condition_encoder"]["silence_latent"] = load_silence_latent(official / TURBO / "silence_latent.pt")
    for folder, module in comps.items():
        module.silence_latent = theirs[folder].pop("silence_latent", None) if folder == "condition_encoder" else None
        missing, unexpected = module.load_state_dict(theirs[folder], strict=False)
        assert not unexpected and set(missing) <= {"silence_latent"}, (folder, missing, unexpected)
    text = official / "Qwen3-Embedding-0.6B"
    pipe = AceStepPipeline(
        vae=AutoencoderOobleck.from_pretrained(str(official / "vae")),
        text_encoder=AutoModel.from_pretrained(str(text)), tokenizer=AutoTokenizer.from_pretrained(str(text)),
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0), **comps,
    )
    pipe.save_pretrained(str(out), safe_serialization=True)
    write_extra_fields(out, cfg)
    return out


@pytest.fixture(scope="module")
def diffusers_tree(tiny_tree, tmp_path_factory):
    return build_diffusers_tree(tiny_tree, tmp_path_factory.mktemp("diffusers") / "tiny-turbo-diffusers")


@pytest.fixture(scope="module")
def short_source(tmp_path_factory) -> Path:
    """A 1 s stereo tone pair (the tiny VAE's encoder runs at the full sample rate: keep it short)."""
    import numpy as np

    t = np.arange(48000) / 48000
    path = tmp_path_factory.mktemp("audio") / "short.wav"
    sf.write(path, np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.3 * np.sin(2 * np.pi * 330 * t)], 1), 48000,
             subtype="FLOAT")
    return path


def _written_audio(capsys) -> tuple[Path, dict]:
    lines = [Path(line) for line in capsys.readouterr().out.split() if line.strip()]
    audio = next(p for p in lines if p.suffix not in (".json",))
    sidecar = json.loads(next(p for p in lines if p.suffix == ".json").read_text())
    return audio, sidecar


def _run(capsys, *args: str) -> tuple:
    assert main([*args, "--quiet", "--device", "cpu", "--format", "wav"]) == 0
    audio, sidecar = _written_audio(capsys)
    samples, rate = sf.read(str(audio), dtype="float32", always_2d=True)
    return samples, rate, sidecar


def test_the_tree_has_the_converter_layout(diffusers_tree, tiny_tree):
    assert all((diffusers_tree / name).exists() for name in FOLDERS)
    index = json.loads((diffusers_tree / "model_index.json").read_text())
    assert index["_class_name"] == "AceStepPipeline" and index["transformer"][1] == "AceStepTransformer1DModel"
    ours, official = load_dit(diffusers_tree), load_dit(tiny_tree / TURBO)
    assert ours.config == official.config and ours.config.timbre_fix_frame == 30
    for key, value in official.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key


@pytest.mark.parametrize("task", [
    ["generate", "--caption", "lofi piano", "--lyrics", "la la", "--duration", "10", "--lm", "none"],
    ["cover", "--caption", "jazz trio", "--strength", "0.5", "--noise-strength", "0.2"],
])
def test_cli_gives_the_official_trees_samples(diffusers_tree, tiny_tree, short_source, tmp_path, capsys, task):
    extra = ["--source", str(short_source)] if task[0] == "cover" else []
    runs = {}
    for name, model in (("official", tiny_tree), ("diffusers", diffusers_tree)):
        runs[name] = _run(capsys, *task, *extra, "--model", str(model), "--seed", "5", "--steps", "2",
                          "--output-dir", str(tmp_path / name))
    (a, rate_a, side_a), (b, rate_b, side_b) = runs["official"], runs["diffusers"]
    assert rate_a == rate_b == 48000 and a.shape == b.shape and a.shape[0] > 0
    assert float(abs(a).max()) > 0
    assert (a == b).all(), f"max difference {float(abs(a - b).max())}"
    assert side_a["params"]["model"] == side_b["params"]["model"] == "turbo"


def test_info_describes_both_layouts(diffusers_tree, tiny_tree, capsys):
    assert main(["info", "--root", "nowhere", "--model", str(diffusers_tree)]) == 0
    model = json.loads(capsys.readouterr().out)["model"]
    assert model["layout"] == "diffusers" and model["variants"] == {"turbo": str(diffusers_tree)}
    assert model["dit"] == {"xl": False, "turbo": True, "model_version": "turbo", "timbre_fix_frame": 30}
    assert model["folders"]["tokenizer"] == str(diffusers_tree / "tokenizer")
    official = describe_model(tiny_tree)
    assert official["layout"] == "official" and set(official["variants"]) == {"turbo", "base"}
    assert official["folders"]["vae"] == str(tiny_tree / "vae")


def test_our_writer_round_trips_and_keeps_extra_fields(tiny_tree, tmp_path):
    """`save_diffusers` (the library's writer, through the library's key map) gives a tree that
    loads back to the same DiT and silence latent, `timbre_fix_frame` included; without the extra
    keys (a tree diffusers' converter wrote) the field takes upstream's value, 750."""
    official = load_dit(tiny_tree / TURBO)
    silence = load_silence_latent(tiny_tree / TURBO / "silence_latent.pt")
    out = save_diffusers(tmp_path / "written", official, silence=silence, vae=tiny_tree / "vae",
                         text_encoder=tiny_tree / "Qwen3-Embedding-0.6B")
    back = load_dit(out)
    assert back.config == official.config and back.config.timbre_fix_frame == 30
    assert all(torch.equal(back.state_dict()[k], v) for k, v in official.state_dict().items())
    from songstep.loading.diffusers_map import read_silence_latent

    assert torch.equal(read_silence_latent(out), silence)
    config = out / "transformer" / "config.json"
    data = json.loads(config.read_text())
    for name in ("timbre_fix_frame", "timestep_mu", "timestep_sigma", "data_proportion"):
        data.pop(name)
    config.write_text(json.dumps(data))
    assert load_dit(out).config.timbre_fix_frame == 750


def test_a_hub_repository_in_the_diffusers_layout(diffusers_tree, tmp_path, monkeypatch):
    """A hub id whose repository has a model_index.json is downloaded (JSON and safetensors only)
    into root/<owner>--<name> and loaded as a diffusers tree; offline, that copy is used with no
    hub call. (The hub is simulated: this machine has no network.)"""
    import shutil

    import huggingface_hub

    from songstep.pipeline.components import load_components

    calls = []

    def file_exists(self, repo_id, filename, **kwargs):
        calls.append(("exists", repo_id, filename))
        return repo_id == "someone/tiny-diffusers"

    def snapshot_download(repo_id, *, local_dir, allow_patterns, **kwargs):
        calls.append(("snapshot", repo_id, tuple(allow_patterns)))
        shutil.copytree(diffusers_tree, local_dir)
        return local_dir

    monkeypatch.setattr(huggingface_hub.HfApi, "file_exists", file_exists)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    comps = load_components("someone/tiny-diffusers", device="cpu", root=tmp_path)
    target = tmp_path / "someone--tiny-diffusers"
    assert comps.variant == "turbo" and comps.folders["vae"] == target / "vae"
    assert [c[0] for c in calls] == ["exists", "snapshot"] and "model_index.json" in calls[1][2]
    reference = load_dit(diffusers_tree)
    assert all(torch.equal(comps.dit.state_dict()[k], v) for k, v in reference.state_dict().items())
    calls.clear()
    again = load_components("someone/tiny-diffusers", device="cpu", root=tmp_path, offline=True)
    assert again.folders["text-encoder"] == target / "text_encoder" and calls == []
