"""Strict loading of every component, safetensors only, config types, non-finite weights, and
hub calls that cannot hang (a local socket that accepts and never answers)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from songstep.errors import CheckpointError, DownloadError
from songstep.loading import hub
from songstep.loading.checkpoint import load_dit
from songstep.models.lm import load_lm
from songstep.models.text import TextEncoder
from songstep.models.vae import VAE, load_silence_latent

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS = [  # folder in the tiny tree, weights file, loader
    ("vae", "diffusion_pytorch_model.safetensors", VAE.from_pretrained),
    ("Qwen3-Embedding-0.6B", "model.safetensors", TextEncoder.from_pretrained),
    ("acestep-5Hz-lm-1.7B", "model.safetensors", lambda p: load_lm(p, device="cpu")),
    ("acestep-v15-turbo", "model.safetensors", load_dit),
]


def _copy(tiny_tree: Path, folder: str, tmp_path: Path) -> Path:
    target = tmp_path / folder
    shutil.copytree(tiny_tree / folder, target)
    return target


def _edit(path: Path, change) -> str:
    tensors = load_file(path)
    key = sorted(tensors)[-1]
    change(tensors, key)
    save_file(tensors, path, metadata={"format": "pt"})
    return key


def _drop(t, key):
    t.pop(key)


def _extra(t, key):
    t["extra.weight"] = torch.zeros(3)


def _reshape(t, key):
    t[key] = torch.zeros(*(s + 1 for s in t[key].shape))


def _nan(t, key):
    t[key] = t[key].clone().fill_(float("nan"))


@pytest.mark.parametrize("folder, weights, load", COMPONENTS, ids=[c[0] for c in COMPONENTS])
@pytest.mark.parametrize("change, words", [(_drop, "missing"), (_extra, "unexpected"), (_reshape, "shape"),
                                           (_nan, "non-finite")], ids=["missing", "unexpected", "shape", "nan"])
def test_every_component_loads_strictly(tiny_tree, tmp_path, folder, weights, load, change, words) -> None:
    target = _copy(tiny_tree, folder, tmp_path)
    key = _edit(target / weights, change)
    with pytest.raises(CheckpointError, match=words) as info:
        load(target)
    text = str(info.value)
    assert str(target) in text
    assert ("extra.weight" if change is _extra else key) in text


@pytest.mark.parametrize("folder, weights, load", COMPONENTS, ids=[c[0] for c in COMPONENTS])
def test_truncated_safetensors_is_a_checkpoint_error(tiny_tree, tmp_path, folder, weights, load) -> None:
    target = _copy(tiny_tree, folder, tmp_path)
    data = (target / weights).read_bytes()
    (target / weights).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=str(target)):
        load(target)


@pytest.mark.parametrize("folder, weights, load", COMPONENTS[:3], ids=[c[0] for c in COMPONENTS[:3]])
def test_a_folder_with_only_a_pickle_is_refused_unread(tiny_tree, tmp_path, folder, weights, load) -> None:
    target = _copy(tiny_tree, folder, tmp_path)
    (target / weights).unlink()
    (target / "pytorch_model.bin").write_bytes(b"\x80\x04 not to be unpickled")
    with pytest.raises(CheckpointError, match="only pickled weights .*pytorch_model.bin.*safetensors only"):
        load(target)


def test_lm_folder_with_only_a_pickle_through_the_cli(tiny_tree, tmp_path) -> None:
    target = _copy(tiny_tree, "acestep-5Hz-lm-1.7B", tmp_path)
    (target / "model.safetensors").unlink()
    (target / "pytorch_model.bin").write_bytes(b"\x80\x04 not to be unpickled")
    from songstep.cli import main

    assert main(["plan", "--model", str(tiny_tree), "--lm", str(target), "--device", "cpu", "--quiet",
                 "--caption", "x", "--duration", "10"]) == 1


@pytest.mark.parametrize("field, value", [("hidden_size", "32"), ("use_sliding_window", 1), ("fsq_input_levels", [8, "x"]),
                                          ("rms_norm_eps", None)])
def test_dit_config_field_of_the_wrong_type(tiny_tree, tmp_path, field, value) -> None:
    target = _copy(tiny_tree, "acestep-v15-turbo", tmp_path)
    config = json.loads((target / "config.json").read_text())
    config[field] = value
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"field '{field}' must be"):
        load_dit(target)


def test_nan_in_the_silence_latent(tiny_tree, tmp_path) -> None:
    good = load_silence_latent(tiny_tree / "acestep-v15-turbo" / "silence_latent.pt")
    bad = good.transpose(1, 2).clone()
    bad[0, 3, 5] = float("nan")
    torch.save(bad, tmp_path / "silence_latent.pt")
    with pytest.raises(CheckpointError, match="non-finite"):
        load_silence_latent(tmp_path / "silence_latent.pt")


def test_hub_listing_skips_pickles() -> None:
    comp = hub.COMPONENTS["vae"]

    class Listing:
        def list_files(self, repo_id, revision, subfolder):
            return [hub.RemoteFile(f"{subfolder}/{name}", 10, None, None)
                    for name in ("config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")]

    run = SimpleNamespace(hub=Listing(), lock=SimpleNamespace(components={}))
    names = [f.path for f in hub._remote_files(comp, "0" * 40, run)]
    assert names == ["vae/config.json", "vae/diffusion_pytorch_model.safetensors"]


class SilentServer:
    """Accepts connections on 127.0.0.1 and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def silent_server():
    server = SilentServer()
    yield server
    server.close()


@pytest.mark.parametrize("args, component", [(["download", "vae"], "vae"),
                                             (["generate", "--duration", "10", "--device", "cpu", "--quiet"], "turbo")])
def test_a_host_that_never_answers_ends_with_one_line(silent_server, tmp_path, args, component) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_ENDPOINT": silent_server.url, "HF_HUB_OFFLINE": "0",
           "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2", "HF_HUB_DISABLE_TELEMETRY": "1"}
    # the bound on the run is the check: without timeouts it never returns (timeout 2 s + margin)
    done = subprocess.run([sys.executable, "-m", "songstep.cli", *args, "--root", str(tmp_path / "ck")],
                          capture_output=True, text=True, env=env, timeout=90, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    # one line, naming the component (the download's preflight names it with its repo and revision)
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"{component}:" in lines[0]
    assert "no answer from 127.0.0.1 within 2 s" in lines[0] and "HF_HUB_DOWNLOAD_TIMEOUT" in lines[0]
    assert silent_server.conns  # it did connect


def test_every_hub_call_times_out_in_the_library(silent_server, tmp_path, monkeypatch) -> None:
    from huggingface_hub import constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_ETAG_TIMEOUT", 1)
    monkeypatch.setattr(hf_constants, "HF_HUB_DOWNLOAD_TIMEOUT", 1)
    client = hub.HfHubClient(endpoint=silent_server.url, token=False, cache_dir=tmp_path / "hf")
    calls = {
        "resolve_revision": lambda: client.resolve_revision("a/b", "main"),
        "list_files": lambda: client.list_files("a/b", "0" * 40, None),
        "download": lambda: client.download("a/b", "config.json", "0" * 40, tmp_path / "d"),
    }
    for name, call in calls.items():
        result: list[BaseException] = []
        worker = threading.Thread(target=_capture, args=(call, result), daemon=True)
        worker.start()
        worker.join(timeout=60)  # the bound (a hang would never end)
        assert not worker.is_alive(), f"{name} hangs"
        assert isinstance(result[0], DownloadError), (name, result)
        assert "no answer" in str(result[0]) or "cannot be reached" in str(result[0]), (name, result)


def _capture(call, result: list) -> None:
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - handed to the test thread
        result.append(exc)
