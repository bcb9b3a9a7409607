"""Keys (missing, wrong, Bearer, body ai_token, several keys), the loopback rule, path traversal,
oversize and non-audio uploads, CORS off by default. A fake fast pipeline: this is the HTTP layer."""

from __future__ import annotations

import io
import json

import pytest

pytest.importorskip("fastapi")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from songstep.errors import InvalidRequest  # noqa: E402
from songstep.server.app import create_app  # noqa: E402
from songstep.server.settings import ServerSettings, hash_key, key_hashes  # noqa: E402
from tests.server.fakes import FakePipeline  # noqa: E402

KEYS = ["first-secret-key", "second-secret-key"]


@pytest.fixture()
def client(tmp_path):
    settings = ServerSettings(data_dir=tmp_path, api_key_hashes=key_hashes(KEYS), max_upload_bytes=200_000,
                              max_upload_seconds=5.0)
    with TestClient(create_app(lambda: FakePipeline(), settings)) as c:
        yield c


def wav(seconds: float, rate: int = 48000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros((int(rate * seconds), 2), np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_keys_are_stored_hashed() -> None:
    assert key_hashes(["first-secret-key"]) == (hash_key("first-secret-key"),)
    assert key_hashes(["sha256:" + "a" * 64]) == ("a" * 64,)
    with pytest.raises(InvalidRequest):
        key_hashes(["short"])


ROUTES = [("get", "/v1/models", {}), ("get", "/v1/stats", {}), ("get", "/v1/model_inventory", {}),
          ("get", "/metrics", {}), ("get", "/v1/audio?path=x", {}), ("get", "/v2/jobs", {}),
          ("post", "/release_task", {"json": {"prompt": "x"}}), ("post", "/query_result", {"json": {}}),
          ("post", "/format_input", {"json": {}}), ("post", "/create_random_sample", {"json": {}}),
          ("post", "/v1/create_sample", {"json": {}}), ("post", "/v2/jobs", {"json": {}}),
          ("post", "/v1/chat/completions", {"json": {"messages": [{"role": "user", "content": "x"}]}})]


@pytest.mark.parametrize("method,path,kw", ROUTES)
def test_every_route_but_health_needs_a_key(client, method, path, kw) -> None:
    r = getattr(client, method)(path, **kw)
    assert r.status_code == 401 and r.json()["code"] == 401 and "missing API key" in r.json()["error"]
    r = getattr(client, method)(path, headers={"Authorization": "Bearer wrong-key-123"}, **kw)
    assert r.status_code == 401 and r.json()["error"] == "invalid API key"
    for key in KEYS:
        r = getattr(client, method)(path, headers={"Authorization": f"Bearer {key}"}, **kw)
        assert r.status_code != 401


def test_health_is_open_and_body_ai_token_works(client) -> None:
    assert client.get("/health").status_code == 200
    assert client.post("/release_task", json={"prompt": "x", "ai_token": KEYS[1]}).status_code == 200
    assert client.post("/release_task", data={"prompt": "x", "ai_token": KEYS[0]}).status_code == 200
    assert client.post("/release_task", json={"prompt": "x", "ai_token": "nope-nope-nope"}).status_code == 401
    assert client.post("/release_task", files={"ai_token": (None, KEYS[0]), "prompt": (None, "x")}).status_code == 200
    assert client.get("/v1/stats", headers={"Authorization": KEYS[0]}).status_code == 200  # bare, as upstream


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "..%2F..%2Fjobs.sqlite3", "jobs.sqlite3",
                                  "0" * 32 + "/../../jobs.sqlite3", "0" * 32 + "/0.mp3/../../x", "0" * 31 + "g/0.mp3",
                                  "0" * 32 + "/jobs.sqlite3"])
def test_path_traversal_is_refused(client, path) -> None:
    r = client.get("/v1/audio", params={"path": path}, headers={"Authorization": f"Bearer {KEYS[0]}"})
    assert r.status_code == 403 and r.json()["code"] == 403
    r = client.get("/v1/audio", params={"path": "0" * 32 + "/0.mp3"}, headers={"Authorization": f"Bearer {KEYS[0]}"})
    assert r.status_code == 404


def test_uploads_are_limited_and_decoded(client, tmp_path) -> None:
    auth = {"Authorization": f"Bearer {KEYS[0]}"}
    form = {"prompt": "x", "task_type": "cover"}
    r = client.post("/release_task", data=form, files={"src_audio": ("a.wav", wav(3.0), "audio/wav")}, headers=auth)
    assert r.status_code == 413 and "too large" in r.json()["error"]
    r = client.post("/release_task", data=form, files={"src_audio": ("a.wav", b"MZ\x90\x00" * 100, "audio/wav")},
                    headers=auth)
    assert r.status_code == 415 and "not a readable audio file" in r.json()["error"]
    r = client.post("/release_task", data=form, files={"src_audio": ("a.wav", b"", "audio/wav")}, headers=auth)
    assert r.status_code == 415 and "empty" in r.json()["error"]
    r = client.post("/release_task", data=form, files={"src_audio": ("a.wav", wav(6.0, 8000), "audio/wav")}, headers=auth)
    assert r.status_code == 415 and "too long" in r.json()["error"]
    r = client.post("/release_task", data=form, files={"src_audio": ("evil.mp3", wav(1.0), "audio/mpeg")},
                    headers=auth)
    assert r.status_code == 200  # the content decides, not the name
    uploads = list((tmp_path / "uploads").rglob("*"))
    assert [p.name for p in uploads if p.is_file()] == ["source_audio.wav"]  # refused uploads are deleted


def test_cors_is_off_by_default(client, tmp_path) -> None:
    r = client.options("/v1/models", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in r.headers
    settings = ServerSettings(data_dir=tmp_path / "cors", cors_origins=("https://app.example",))
    with TestClient(create_app(lambda: FakePipeline(), settings)) as c:
        r = c.get("/health", headers={"Origin": "https://app.example"})
        assert r.headers["access-control-allow-origin"] == "https://app.example"


def _settings(*argv: str):
    from songstep.cli import build_parser
    from songstep.server.cli import settings_from_args

    return settings_from_args(build_parser().parse_args(["serve", "--model", "x", *argv]))


def test_refuses_a_public_host_without_keys(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("SONGSTEP_API_KEY", raising=False)
    data = ["--data-dir", str(tmp_path)]
    with pytest.raises(InvalidRequest, match="refusing to listen on 0.0.0.0"):
        _settings("--host", "0.0.0.0", *data)
    assert not _settings("--host", "127.0.0.1", *data).auth_enabled
    assert not _settings("--host", "0.0.0.0", "--insecure", *data).auth_enabled
    keys = tmp_path / "keys.txt"
    keys.write_text("# team keys\nfirst-secret-key\n\nsha256:" + hash_key("second-secret-key") + "\n")
    s = _settings("--host", "0.0.0.0", "--api-keys-file", str(keys), "--api-key", "third-secret-key", *data)
    assert s.api_key_hashes == key_hashes(["third-secret-key", *KEYS])
    assert "secret" not in json.dumps(list(s.api_key_hashes))
