"""Upstream's adapter routes (`/v1/lora/...`) over the same adapter code as the CLI and the UI:
load from the server's adapters folder (never an arbitrary path), toggle, scale, status, unload;
the base weights never change."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("fastapi")
peft = pytest.importorskip("peft")

import torch  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from songstep import lora  # noqa: E402
from songstep.server.app import create_app  # noqa: E402
from songstep.server.settings import ServerSettings  # noqa: E402
from songstep.testing.tiny import tiny_dit  # noqa: E402
from tests.server.fakes import FakePipeline  # noqa: E402


class AdapterPipeline(lora.LoraMixin, FakePipeline):
    def __init__(self):
        super().__init__()
        self.components.dit = tiny_dit(0)
        self._lock = threading.RLock()


@pytest.fixture
def served(tmp_path):
    pipe = AdapterPipeline()
    donor = tiny_dit(0)
    config = peft.LoraConfig(r=4, lora_alpha=8.0, target_modules=list(lora.TARGET_MODULES), init_lora_weights=False)
    lora.add_adapter(donor, config, "style")
    lora.save_adapter(donor, tmp_path / "loras" / "style", "style")
    with TestClient(create_app(lambda: pipe, ServerSettings(data_dir=tmp_path))) as client:
        yield client, pipe


def test_load_toggle_scale_status_unload(served) -> None:
    client, pipe = served
    base = {k: v.clone() for k, v in pipe.components.dit.state_dict().items()}
    r = client.post("/v1/lora/load", json={"lora_path": "style", "adapter_name": "style"})
    assert r.status_code == 200 and r.json()["code"] == 200, r.text
    data = r.json()["data"]
    assert data["adapter_name"] == "style" and data["use_lora"] and data["adapters"][0]["kind"] == "lora"
    assert client.post("/v1/lora/scale", json={"scale": 0.25}).json()["data"]["adapters"][0]["scale"] == 0.25
    assert client.post("/v1/lora/toggle", json={"use_lora": False}).json()["data"]["use_lora"] is False
    assert client.get("/v1/lora/status").json()["data"]["loaded"] is True
    assert client.post("/v1/lora/unload", json={}).json()["data"]["loaded"] is False
    after = pipe.components.dit.state_dict()
    assert set(after) == set(base) and all(torch.equal(after[k], base[k]) for k in base)


@pytest.mark.parametrize("path,code", [("../jobs.sqlite3", 400), ("/etc/passwd", 400), ("missing", 404)])
def test_paths_outside_the_adapters_folder_are_refused(served, path, code) -> None:
    client, pipe = served
    r = client.post("/v1/lora/load", json={"lora_path": path})
    assert r.status_code == code and r.json()["data"] is None and r.json()["error"]
    assert pipe.lora_status() == []
