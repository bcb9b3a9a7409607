"""songstep.loading.hub against a fake hub: a local HTTP server that answers the endpoints
huggingface_hub's real code path calls (`HfApi.repo_info`, `HfApi.list_repo_tree`,
HEAD/GET `/{repo}/resolve/{revision}/{file}`), so downloads run through `hf_hub_download`."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import huggingface_hub.file_download as hf_file_download
import pytest
from huggingface_hub import constants as hf_constants

from songstep.errors import ChecksumMismatch, DownloadError, ModelNotFound
from songstep.loading import hub

REPO = "ACE-Step/Ace-Step1.5"
OTHER = "ACE-Step/acestep-v15-base"
WEIGHTS = bytes(range(256)) * 64  # 16 KiB "model.safetensors"
SILENCE = b"silence" * 100
CONFIG = b'{"model_type": "acestep"}'


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """Repos as {commit: {path: bytes}} plus a `main` ref; knobs to lie, hide and drop."""

    def __init__(self) -> None:
        self.commits: dict[str, dict[str, dict[str, bytes]]] = {}
        self.refs: dict[str, str] = {}
        self.corrupt: dict[str, bytes] = {}  # path -> bytes served instead (listing/ETag still claim the real ones)
        self.hidden: set[str] = set()  # listed, but 404 on resolve
        self.drop_once: set[str] = set()  # first GET sends half the body then closes the connection
        self.requests: list[tuple[str, str, str | None]] = []
        self.url = ""

    def push(self, repo: str, files: dict[str, bytes], commit: str | None = None, main: bool = True) -> str:
        commit = commit or hashlib.sha1(repr((repo, sorted(files.items()), len(self.commits))).encode()).hexdigest()
        self.commits.setdefault(repo, {})[commit] = dict(files)
        if main:
            self.refs[repo] = commit
        return commit

    def remove_commit(self, repo: str, commit: str) -> None:
        del self.commits[repo][commit]


class Handler(BaseHTTPRequestHandler):
    """Serves `fake` (set on a per-server subclass)."""

    fake: FakeHub

    def log_message(self, *_: object) -> None:
        pass

    def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", headers.get("Content-Length", str(len(body))))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, code: str, commit: str | None = None) -> None:
        headers = {"X-Error-Code": code, "Content-Type": "application/json"}
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send(404, headers, json.dumps({"error": code}).encode())

    def _repo_commit(self, repo: str, rev: str) -> tuple[str, dict[str, bytes]] | None:
        if repo not in self.fake.commits:
            self._error("RepoNotFound")
            return None
        commit = self.fake.refs[repo] if rev == "main" else rev
        if commit not in self.fake.commits[repo]:
            self._error("RevisionNotFound")
            return None
        return commit, self.fake.commits[repo][commit]

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        path = unquote(urlsplit(self.path).path)
        self.fake.requests.append((self.command, path, self.headers.get("Range")))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and parts[4] == "revision":
            self._info("/".join(parts[2:4]), parts[5])
        elif parts[:2] == ["api", "models"] and parts[4] == "tree":
            self._tree("/".join(parts[2:4]), parts[5], "/".join(parts[6:]))
        elif len(parts) > 4 and parts[2] == "resolve":
            self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
        else:
            self._send(404, {})

    def _info(self, repo: str, rev: str) -> None:
        if found := self._repo_commit(repo, rev):
            self._send(200, {"Content-Type": "application/json"},
                       json.dumps({"id": repo, "sha": found[0]}).encode())

    def _tree(self, repo: str, rev: str, prefix: str) -> None:
        if not (found := self._repo_commit(repo, rev)):
            return
        items = [self._entry(p, d) for p, d in found[1].items() if not prefix or p.startswith(prefix + "/")]
        if not items:
            return self._error("EntryNotFound", found[0])
        self._send(200, {"Content-Type": "application/json"}, json.dumps(items).encode())

    @staticmethod
    def _entry(path: str, data: bytes) -> dict[str, object]:
        entry: dict[str, object] = {"type": "file", "path": path, "size": len(data), "oid": _git_oid(data)}
        if path.endswith((".safetensors", ".pt")):
            entry["lfs"] = {"oid": _sha256(data), "size": len(data), "pointerSize": 134}
        return entry

    def _resolve(self, repo: str, rev: str, filename: str) -> None:
        if not (found := self._repo_commit(repo, rev)):
            return
        commit, files = found
        if filename not in files or filename in self.fake.hidden:
            return self._error("EntryNotFound", commit)
        data = files[filename]
        etag = _sha256(data) if filename.endswith((".safetensors", ".pt")) else _git_oid(data)
        body = self.fake.corrupt.get(filename, data)
        headers = {"X-Repo-Commit": commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        start = int(self.headers.get("Range", "bytes=0-")[6:].split("-")[0])
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
        if self.command == "GET" and filename in self.fake.drop_once:
            self.fake.drop_once.discard(filename)
            self._send_truncated(headers, body)
            return
        self._send(206 if start else 200, headers, body[start:])

    def _send_truncated(self, headers: dict[str, str], body: bytes) -> None:
        self.send_response(200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)  # no registry fetch from huggingface.co
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_file_download.time, "sleep", lambda _: None)  # retry without waiting
    fake = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("FakeHubHandler", (Handler,), {"fake": fake}))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield fake
    server.shutdown()
    server.server_close()


def _table(weights_sha: str | None = None, weights_size: int | None = None) -> dict[str, hub.Component]:
    dit_files = {
        "config.json": hub.KnownFile(len(CONFIG)),
        "model.safetensors": hub.KnownFile(weights_size, weights_sha),
        "silence_latent.pt": hub.KnownFile(len(SILENCE), _sha256(SILENCE)),
    }
    return {
        "turbo": hub.Component("turbo", REPO, "acestep-v15-turbo", "acestep-v15-turbo", None, dit_files),
        "vae": hub.Component("vae", REPO, "vae", "vae", None, {"config.json": hub.KnownFile()}),
        "base": hub.Component("base", OTHER, "acestep-v15-base", files=dit_files),
    }


def _bundle(weights: bytes = WEIGHTS, vae_config: bytes = b'{"vae": 1}') -> dict[str, bytes]:
    return {
        "config.json": b"{}",
        "acestep-v15-turbo/config.json": CONFIG,
        "acestep-v15-turbo/model.safetensors": weights,
        "acestep-v15-turbo/silence_latent.pt": SILENCE,
        "acestep-v15-turbo/modeling_acestep_v15_turbo.py": b"# remote code, never run\n",
        "vae/config.json": vae_config,
        "vae/diffusion_pytorch_model.safetensors": b"vae weights",
    }


def _base_repo() -> dict[str, bytes]:
    return {"config.json": CONFIG, "model.safetensors": WEIGHTS, "silence_latent.pt": SILENCE}


def _client(fake: FakeHub, tmp_path: Path) -> hub.HfHubClient:
    return hub.HfHubClient(endpoint=fake.url, token=False, cache_dir=tmp_path / "hf-cache")


def _leftovers(*dirs: Path) -> list[Path]:
    return [p for d in dirs if d.exists() for p in d.rglob("*") if p.name.endswith(".incomplete")]


def test_table_matches_spec() -> None:
    turbo = hub.COMPONENTS["turbo"]
    assert (turbo.repo_id, turbo.subfolder, turbo.revision) == (REPO, "acestep-v15-turbo", hub.MAIN_REVISION)
    assert turbo.files["model.safetensors"].size == 4_787_825_604
    assert hub.COMPONENTS["base"].repo_id == "ACE-Step/acestep-v15-base"
    assert hub.COMPONENTS["text-encoder"].folder == "Qwen3-Embedding-0.6B"
    assert hub.COMPONENTS["lm-4B"].repo_id == "ACE-Step/acestep-5Hz-lm-4B"
    assert [c.name for c in hub.list_components()][:2] == ["turbo", "turbo-shift1"]
    assert len(hub.list_components()) == 14


def test_download_into_upstream_layout_and_lock(fake_hub: FakeHub, tmp_path: Path) -> None:
    commit = fake_hub.push(REPO, _bundle())
    root, events = tmp_path / "checkpoints", []
    table = _table(_sha256(WEIGHTS), len(WEIGHTS))
    folder = hub.resolve(REPO, "turbo", root=root, hub=_client(fake_hub, tmp_path), table=table,
                         progress=events.append)
    assert folder == root / "acestep-v15-turbo"
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert (folder / "modeling_acestep_v15_turbo.py").is_file()
    assert not (root / "config.json").exists()  # only the component's subfolder
    lock = json.loads((root / hub.LOCK_NAME).read_text())
    assert lock["repos"][REPO] == commit
    entry = lock["components"]["turbo"]
    assert entry["status"] == "complete" and entry["commit"] == commit
    assert entry["files"]["model.safetensors"] == {"size": len(WEIGHTS), "sha256": _sha256(WEIGHTS)}
    assert events[-1].done == events[-1].total and {e.filename for e in events} >= {"model.safetensors"}

    # second call: served from disk, no request reaches the hub
    fake_hub.requests.clear()
    assert hub.resolve(REPO, "turbo", root=root, hub=_client(fake_hub, tmp_path), table=table) == folder
    assert fake_hub.requests == []


def test_separate_repo_goes_to_its_own_folder(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.push(OTHER, _base_repo())
    folder = hub.resolve(REPO, "base", root=tmp_path / "ck", hub=_client(fake_hub, tmp_path), table=_table())
    assert folder == tmp_path / "ck" / "acestep-v15-base"
    assert (folder / "silence_latent.pt").read_bytes() == SILENCE


def test_real_table_uses_pinned_revision_and_checks_sizes_first(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.push(REPO, _bundle(vae_config=b'{"pinned": true}'), commit=hub.MAIN_REVISION, main=False)
    fake_hub.push(REPO, _bundle(vae_config=b'{"main": true}'))
    root, client = tmp_path / "ck", _client(fake_hub, tmp_path)
    vae = hub.resolve(REPO, "vae", root=root, hub=client)  # default table: pinned bundle commit
    assert (vae / "config.json").read_bytes() == b'{"pinned": true}'
    assert not any("/revision/" in p for _, p, _ in fake_hub.requests)  # pinned: nothing to resolve
    with pytest.raises(ChecksumMismatch, match="size mismatch: expected .*nothing was downloaded"):  # real sizes
        hub.resolve(REPO, "turbo", root=root, hub=client)
    assert not (root / "acestep-v15-turbo").exists()


def test_changed_remote_keeps_locked_commit_and_refuses_when_gone(
    fake_hub: FakeHub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = fake_hub.push(REPO, _bundle())
    root, client, table = tmp_path / "ck", _client(fake_hub, tmp_path), _table()
    hub.resolve(REPO, "turbo", root=root, hub=client, table=table)
    second = fake_hub.push(REPO, _bundle(vae_config=b'{"vae": 2}'))

    with caplog.at_level(logging.WARNING, logger="songstep.loading.hub"):
        vae = hub.resolve(REPO, "vae", root=root, hub=client, table=table)
    assert (vae / "config.json").read_bytes() == b'{"vae": 1}'  # the locked commit, not the new main
    assert "keeping the locked commit" in caplog.text

    fake_hub.remove_commit(REPO, first)  # history rewritten: the locked commit is gone
    (vae / "config.json").unlink()
    with pytest.raises(DownloadError, match="Refusing to switch silently") as info:
        hub.resolve(REPO, "vae", root=root, hub=client, table=table)
    assert first in str(info.value) and second in str(info.value) and "update=True" in str(info.value)

    hub.resolve(REPO, "vae", root=root, hub=client, table=table, update=True)
    assert (vae / "config.json").read_bytes() == b'{"vae": 2}'
    assert json.loads((root / hub.LOCK_NAME).read_text())["repos"][REPO] == second


def test_checksum_mismatch_after_download_removes_file(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.push(REPO, _bundle())
    bad = bytes(reversed(WEIGHTS))  # same size, different bytes; listing and ETag still claim WEIGHTS
    fake_hub.corrupt["acestep-v15-turbo/model.safetensors"] = bad
    root, cache_dir = tmp_path / "ck", tmp_path / "hf-cache"
    with pytest.raises(ChecksumMismatch) as info:
        hub.resolve(REPO, "turbo", root=root, hub=_client(fake_hub, tmp_path), table=_table(_sha256(WEIGHTS)))
    message = str(info.value)
    assert "model.safetensors" in message and _sha256(WEIGHTS) in message and _sha256(bad) in message
    assert not (root / "acestep-v15-turbo" / "model.safetensors").exists()
    assert not list(root.rglob("model.safetensors*"))  # no file, no huggingface_hub metadata
    assert not _leftovers(root, cache_dir)
    assert not (cache_dir.exists() and any(cache_dir.rglob("*")))  # local_dir mode never writes the HF cache
    lock = json.loads((root / hub.LOCK_NAME).read_text())
    assert lock["components"]["turbo"]["status"] == "partial"

    del fake_hub.corrupt["acestep-v15-turbo/model.safetensors"]  # mirror fixed: next run succeeds
    folder = hub.resolve(REPO, "turbo", root=root, hub=_client(fake_hub, tmp_path), table=_table(_sha256(WEIGHTS)))
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS


def test_known_checksum_differs_from_hub_listing_downloads_nothing(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.push(REPO, _bundle())
    with pytest.raises(ChecksumMismatch, match="nothing was downloaded"):
        hub.resolve(REPO, "turbo", root=tmp_path / "ck", hub=_client(fake_hub, tmp_path), table=_table("0" * 64))
    assert not any(m == "GET" and "/resolve/" in p for m, p, _ in fake_hub.requests)
    assert not (tmp_path / "ck" / "acestep-v15-turbo").exists()


def test_missing_file_repo_and_hidden_file(fake_hub: FakeHub, tmp_path: Path) -> None:
    files = _bundle()
    del files["acestep-v15-turbo/silence_latent.pt"]
    fake_hub.push(REPO, files)
    client, root = _client(fake_hub, tmp_path), tmp_path / "ck"
    with pytest.raises(ModelNotFound, match="silence_latent.pt"):
        hub.resolve(REPO, "turbo", root=root, hub=client, table=_table())
    with pytest.raises(ModelNotFound, match="repository not found"):
        hub.resolve(REPO, "base", root=root, hub=client, table=_table())

    fake_hub.push(REPO, _bundle())
    fake_hub.hidden.add("acestep-v15-turbo/model.safetensors")
    with pytest.raises(ModelNotFound, match="not found"):
        hub.resolve(REPO, "turbo", root=root, hub=client, table=_table())
    assert not (root / "acestep-v15-turbo" / "model.safetensors").exists()
    assert not _leftovers(root)


def test_resume_after_dropped_connection(fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 1024)  # write to disk before the drop
    fake_hub.push(REPO, _bundle())
    fake_hub.drop_once.add("acestep-v15-turbo/model.safetensors")
    folder = hub.resolve(REPO, "turbo", root=tmp_path / "ck", hub=_client(fake_hub, tmp_path), table=_table())
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    ranges = [r for m, p, r in fake_hub.requests if m == "GET" and p.endswith("model.safetensors")]
    assert ranges == [None, f"bytes={len(WEIGHTS) // 2}-"]  # second request continued where the first stopped


def test_interrupted_component_restarts_at_missing_file(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.push(REPO, _bundle())
    root, client = tmp_path / "ck", _client(fake_hub, tmp_path)
    fake_hub.hidden.add("acestep-v15-turbo/silence_latent.pt")
    with pytest.raises(ModelNotFound):
        hub.resolve(REPO, "turbo", root=root, hub=client, table=_table())
    fake_hub.hidden.clear()
    fake_hub.requests.clear()
    hub.resolve(REPO, "turbo", root=root, hub=client, table=_table())
    fetched = {p.rsplit("/", 1)[-1] for m, p, _ in fake_hub.requests if m == "GET" and "/resolve/" in p}
    assert "model.safetensors" not in fetched and "silence_latent.pt" in fetched


def test_offline_with_nothing_local(fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hub.push(REPO, _bundle())
    with pytest.raises(DownloadError) as info:
        hub.resolve(REPO, "turbo", root=tmp_path / "ck", offline=True, hub=_client(fake_hub, tmp_path), table=_table())
    message = str(info.value)
    assert "offline" in message and "songstep download turbo" in message and "hf download" in message
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE"):
        hub.resolve(REPO, "turbo", root=tmp_path / "ck", hub=_client(fake_hub, tmp_path), table=_table())
    assert fake_hub.requests == []


def test_unreachable_hub_is_a_download_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    client = hub.HfHubClient(endpoint="http://127.0.0.1:9", token=False, cache_dir=tmp_path / "hf")
    with pytest.raises(DownloadError, match="cannot reach"):
        hub.resolve(REPO, "base", root=tmp_path / "ck", hub=client, table=_table())


def test_offline_with_everything_local(fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hub.push(REPO, _bundle())
    root = tmp_path / "ck"
    hub.download(["turbo", "vae"], root, hub=_client(fake_hub, tmp_path), table=_table())
    fake_hub.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    paths = hub.download(["turbo", "vae"], root, offline=True, table=_table(), verify="sha256")
    assert paths == {"turbo": root / "acestep-v15-turbo", "vae": root / "vae"}
    assert fake_hub.requests == []


def _local_checkpoints(tmp_path: Path, weights: bytes = WEIGHTS) -> Path:
    ck = tmp_path / "my-checkpoints"
    for name, data in _bundle(weights).items():
        (ck / name).parent.mkdir(parents=True, exist_ok=True)
        (ck / name).write_bytes(data)
    return ck


def test_local_directory(tmp_path: Path) -> None:
    ck, table = _local_checkpoints(tmp_path), _table(_sha256(WEIGHTS), len(WEIGHTS))
    root = tmp_path / "root"
    assert hub.resolve(ck, "turbo", root=root, table=table) == ck / "acestep-v15-turbo"
    assert hub.resolve(str(ck / "acestep-v15-turbo"), "turbo", root=root, table=table) == ck / "acestep-v15-turbo"
    assert hub.resolve(ck, "vae", root=root, table=table, verify="sha256") == ck / "vae"
    with pytest.raises(ModelNotFound, match="acestep-v15-base"):
        hub.resolve(ck, "base", root=root, table=table)
    with pytest.raises(ModelNotFound, match="does not exist"):
        hub.resolve(tmp_path / "nope", "turbo", root=root, table=table)
    with pytest.raises(ModelNotFound, match="unknown component"):
        hub.resolve(ck, "turbo-xxl", root=root, table=table)


def test_local_directory_mismatch_is_reported_not_deleted(tmp_path: Path) -> None:
    ck = _local_checkpoints(tmp_path, weights=WEIGHTS[:-1])
    with pytest.raises(ChecksumMismatch, match="size"):
        hub.resolve(ck, "turbo", root=tmp_path / "root", table=_table(weights_size=len(WEIGHTS)))
    ck2 = _local_checkpoints(tmp_path / "b", weights=bytes(reversed(WEIGHTS)))
    hub.resolve(ck2, "turbo", root=tmp_path / "root", table=_table(_sha256(WEIGHTS)))  # size level: passes
    with pytest.raises(ChecksumMismatch, match="sha256"):
        hub.resolve(ck2, "turbo", root=tmp_path / "root", table=_table(_sha256(WEIGHTS)), verify="sha256")
    assert (ck / "acestep-v15-turbo" / "model.safetensors").exists()
    assert (ck2 / "acestep-v15-turbo" / "model.safetensors").exists()


def test_sha_cache_avoids_rehashing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ck, table = _local_checkpoints(tmp_path), _table(_sha256(WEIGHTS))
    calls: list[Path] = []
    real = hub.sha256_file
    monkeypatch.setattr(hub, "sha256_file", lambda p, *a: calls.append(Path(p)) or real(p, *a))
    for _ in range(3):
        hub.resolve(ck, "turbo", root=tmp_path / "root", table=table, verify="sha256")
    assert sorted(p.name for p in calls) == ["model.safetensors", "silence_latent.pt"]  # hashed once each
    assert (tmp_path / "root" / hub.SHA_CACHE_NAME).is_file()

    weights = ck / "acestep-v15-turbo" / "model.safetensors"
    weights.write_bytes(bytes(reversed(WEIGHTS)))  # same size, new mtime: hashed again and caught
    with pytest.raises(ChecksumMismatch):
        hub.resolve(ck, "turbo", root=tmp_path / "root", table=table, verify="sha256")
    assert [p.name for p in calls].count("model.safetensors") == 2


def test_managed_file_corrupted_later_is_removed(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.push(REPO, _bundle())
    root, client, table = tmp_path / "ck", _client(fake_hub, tmp_path), _table(_sha256(WEIGHTS))
    folder = hub.resolve(REPO, "turbo", root=root, hub=client, table=table)
    (folder / "model.safetensors").write_bytes(bytes(reversed(WEIGHTS)))
    with pytest.raises(ChecksumMismatch, match="removed"):
        hub.resolve(REPO, "turbo", root=root, hub=client, table=table, verify="sha256")
    assert not (folder / "model.safetensors").exists()
    assert hub.resolve(REPO, "turbo", root=root, hub=client, table=table) == folder
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS


def test_truncated_managed_file_is_fetched_again(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.push(REPO, _bundle())
    root, client = tmp_path / "ck", _client(fake_hub, tmp_path)
    folder = hub.resolve(REPO, "turbo", root=root, hub=client, table=_table())
    (folder / "model.safetensors").write_bytes(WEIGHTS[:100])
    hub.resolve(REPO, "turbo", root=root, hub=client, table=_table())
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
