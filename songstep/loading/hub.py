"""Checkpoint folders from the hub or from local directories.

`COMPONENTS` maps each component to its hub repo, subfolder, upstream folder name under
`checkpoints/`, pinned revision (where known) and known file sizes / sha256. `resolve()` returns a
verified local folder: found in a local directory, or downloaded with huggingface_hub's own
`hf_hub_download(local_dir=...)` into `root/<folder>`. Unpinned repos are locked on first
download (`root/songstep.lock.json`: commit, file sizes and sha256) and later downloads keep
that commit. Downloaded files are checked against the table and the hub listing; bad ones deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Protocol

from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf
from huggingface_hub.hf_api import RepoFile

from songstep.errors import ChecksumMismatch, DownloadError, ModelNotFound
from songstep.loading import preflight
from songstep.loading.network import hub_errors, install_timeouts, transport_errors
from songstep.loading.preflight import DownloadProgress, ProgressFn
from songstep.models.folders import PICKLE_SUFFIXES

logger = logging.getLogger(__name__)

MAIN_REPO = "ACE-Step/Ace-Step1.5"
MAIN_REVISION = "19671f406d603126926c1b7e2adc169acbcade22"
LOCK_NAME = "songstep.lock.json"
SHA_CACHE_NAME = "songstep.sha256.json"
DEFAULT_COMPONENTS = ("turbo", "vae", "text-encoder", "lm-1.7B")  # what the main bundle ships

Verify = Literal["none", "size", "sha256"]
_SMALL_FILE = 16 * 1024 * 1024  # always hashed after download; larger files when a hash is known
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True)
class KnownFile:
    """Known facts about one file of a component folder; `required` files must exist."""

    size: int | None = None
    sha256: str | None = None
    required: bool = True


@dataclass(frozen=True)
class Component:
    """One checkpoint folder: where it lives on the hub and under the root."""

    name: str
    repo_id: str
    folder: str
    subfolder: str | None = None  # folder inside the repo (the main bundle); None = repo root
    revision: str | None = None  # pinned commit; None = locked on first download
    files: Mapping[str, KnownFile] = field(default_factory=dict)
    role: str = ""

    def __post_init__(self) -> None:
        if self.subfolder is not None and self.subfolder != self.folder:
            raise ValueError(f"{self.name}: subfolder {self.subfolder!r} must equal folder {self.folder!r}")
        object.__setattr__(self, "files", MappingProxyType(dict(self.files)))

    @property
    def required_files(self) -> tuple[str, ...]:
        return tuple(name for name, known in self.files.items() if known.required)


_SILENCE = KnownFile(3_841_215, "a778e9dd942f5e8b2c09c55370782d318834432b03dabbcdf70e6ed49ad6358b")
_DIT_2B_BYTES = 4_787_825_604
_XL_TURBO_SHARDS = (4_986_971_456, 4_986_942_776, 4_986_942_808, 4_988_483_464)


def _row(name: str, folder: str, role: str, files: dict[str, KnownFile], bundle: bool = False) -> Component:
    if bundle:  # a subfolder of the pinned main bundle
        return Component(name, MAIN_REPO, folder, folder, MAIN_REVISION, files, role)
    return Component(name, f"ACE-Step/{folder}", folder, files=files, role=role)


def _dit(sha: str | None = None, size: int | None = None, config: int | None = None) -> dict[str, KnownFile]:
    return {"config.json": KnownFile(config), "model.safetensors": KnownFile(size, sha), "silence_latent.pt": _SILENCE}


def _dit_xl(shards: tuple[int, ...] = (), config: int | None = None) -> dict[str, KnownFile]:
    files = {"config.json": KnownFile(config), "model.safetensors.index.json": KnownFile(71_471),
             "silence_latent.pt": _SILENCE}
    for i, size in enumerate(shards, 1):  # standard shard names; not required in case upstream differs
        files[f"model-{i:05d}-of-{len(shards):05d}.safetensors"] = KnownFile(size, required=False)
    return files


def _build_table() -> Mapping[str, Component]:
    tok = {"config.json": KnownFile(), "tokenizer.json": KnownFile()}
    rows = [
        _row("turbo", "acestep-v15-turbo", "2B DiT, distilled, 8 steps", _dit(
            "3f6e0797fad420a39bd33979eb6e840e30989e34a3794e843d23b60ec6e422d7", _DIT_2B_BYTES, 1968), bundle=True),
        _row("turbo-shift1", "acestep-v15-turbo-shift1", "2B DiT, turbo at shift 1",
             _dit("6a2ae0d66c957eb659fdb438f05e5d2ee62604c311f05ce7464203136a767dc3")),
        _row("turbo-shift3", "acestep-v15-turbo-shift3", "2B DiT, turbo at shift 3",
             _dit("ce57ceb4a82890c87d3d6071c70b2392db91f6c7dcf3f96b32ec7205f0d40457")),
        _row("turbo-continuous", "acestep-v15-turbo-continuous", "2B DiT, turbo, shift 1-5",
             _dit("cffa3e3a44d29cfc686b35d45aab3e4f9dc72c959e5e741d92a1dfc14ac35cd0")),
        _row("base", "acestep-v15-base", "2B DiT base, CFG, 32 steps",
             _dit("4177f600501a6d4bd81cadaa0abac557ffd15c54e5c8cb52053cdb24a0844d6b", _DIT_2B_BYTES, 1940)),
        _row("sft", "acestep-v15-sft", "2B DiT SFT, CFG, 32 steps",
             _dit("d4dd3a93870f06720027965b90771f529ab02094b3d29e2518f1d5e097e1af7e")),
        _row("xl-turbo", "acestep-v15-xl-turbo", "4B DiT, distilled", _dit_xl(_XL_TURBO_SHARDS, 2407)),
        _row("xl-base", "acestep-v15-xl-base", "4B DiT base", _dit_xl()),
        _row("xl-sft", "acestep-v15-xl-sft", "4B DiT SFT", _dit_xl()),
        _row("vae", "vae", "AutoencoderOobleck (diffusers)", {"config.json": KnownFile(),
             "diffusion_pytorch_model.safetensors": KnownFile()}, bundle=True),
        _row("text-encoder", "Qwen3-Embedding-0.6B", "Qwen3 text encoder + tokenizer",
             {**tok, "model.safetensors": KnownFile()}, bundle=True),
        _row("lm-1.7B", "acestep-5Hz-lm-1.7B", "5 Hz planner LM (default)", tok, bundle=True),
        _row("lm-0.6B", "acestep-5Hz-lm-0.6B", "5 Hz planner LM, small", tok),
        _row("lm-4B", "acestep-5Hz-lm-4B", "5 Hz planner LM, large", tok),
    ]
    return MappingProxyType({row.name: row for row in rows})


COMPONENTS: Mapping[str, Component] = _build_table()


def list_components(table: Mapping[str, Component] | None = None) -> list[Component]:
    """Every known component, in table order (for `songstep info`)."""
    return list((table or COMPONENTS).values())


def sha256_file(path: Path, chunk_size: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """Git object id (the hub's `oid` for files not in LFS)."""
    data = Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        data = e
    if not isinstance(data, dict):
        raise DownloadError(f"cannot read the {what} {path} ({data}); fix or delete it")
    return data


class ShaCache:
    """sha256 of files keyed by (resolved path, size, mtime_ns), so a 4.8 GB file is hashed once."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._data = _read_json(self.path, "sha256 cache")
        except DownloadError as e:  # a cache is disposable
            logger.warning("%s; starting a new one", e)
            self._data = {}

    def sha256(self, path: Path, *, fresh: bool = False) -> str:
        """From the cache when size and mtime are unchanged, unless `fresh`."""
        path = Path(path)
        key, stat = str(path.resolve()), path.stat()
        entry = self._data.get(key)
        if not fresh and entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
            return str(entry["sha256"])
        digest = sha256_file(path)
        self._data[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        self._save()
        return digest

    def forget(self, path: Path) -> None:
        if self._data.pop(str(Path(path).resolve()), None) is not None:
            self._save()

    def _save(self) -> None:
        try:
            _write_json(self.path, self._data)
        except OSError as e:
            logger.warning("cannot write the sha256 cache %s: %s", self.path, e)


class LockFile:
    """`root/songstep.lock.json`: repo -> locked commit; component -> commit, status, file sizes/sha256."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        data = _read_json(self.path, "lock file")
        self.repos: dict[str, str] = dict(data.get("repos", {}))
        self.components: dict[str, dict[str, Any]] = dict(data.get("components", {}))

    def mark(self, comp: Component, commit: str, files: Mapping[str, Any] | None = None) -> None:
        """`files=None`: download started (partial); a mapping: complete."""
        self.repos[comp.repo_id] = commit
        self.components[comp.name] = {
            "repo": comp.repo_id, "commit": commit, "folder": comp.folder,
            "status": "partial" if files is None else "complete", "files": dict(files or {}),
        }
        self.save()

    def invalidate(self, name: str) -> None:
        if name in self.components:
            self.components[name]["status"] = "partial"
            self.save()

    def save(self) -> None:
        _write_json(self.path, {"version": 1, "repos": self.repos, "components": self.components})


@dataclass(frozen=True)
class RemoteFile:
    """One file of a hub listing. `path` is relative to the repo root; `sha256` is the LFS oid."""

    path: str
    size: int
    sha256: str | None = None
    git_oid: str | None = None


class HubClient(Protocol):
    """Hub operations songstep needs (`HfHubClient` is the real one). Raise `ModelNotFound` for a
    missing repo / revision / file, `DownloadError` otherwise."""

    def resolve_revision(self, repo_id: str, revision: str) -> str: ...

    def list_files(self, repo_id: str, revision: str, subfolder: str | None) -> list[RemoteFile]: ...

    def download(self, repo_id: str, filename: str, revision: str, local_dir: Path,
                 progress_bar: type | None = None) -> Path: ...


class HfHubClient:
    """`HubClient` over `HfApi.repo_info`, `HfApi.list_repo_tree` and `hf_hub_download`. `endpoint`
    overrides `HF_ENDPOINT`; `cache_dir` is the HF cache (only read in `local_dir` mode)."""

    def __init__(self, *, endpoint: str | None = None, token: str | bool | None = None,
                 cache_dir: str | Path | None = None) -> None:
        self.endpoint = (endpoint or hf_constants.ENDPOINT).rstrip("/")
        self.token = token
        self.cache_dir = cache_dir
        self._api = HfApi(endpoint=self.endpoint, token=token)
        install_timeouts()  # a host that accepts and never answers must not hang us

    def resolve_revision(self, repo_id: str, revision: str) -> str:
        with hub_errors(f"{repo_id}@{revision}", self.endpoint):
            sha = self._api.repo_info(repo_id, revision=revision).sha
        if not sha:
            raise DownloadError(f"{repo_id}@{revision}: the hub did not return a commit sha")
        return sha

    def list_files(self, repo_id: str, revision: str, subfolder: str | None) -> list[RemoteFile]:
        with hub_errors(f"{repo_id}@{revision}/{subfolder or ''}", self.endpoint):
            entries = list(self._api.list_repo_tree(repo_id, path_in_repo=subfolder, recursive=True,
                                                    revision=revision))
        return [RemoteFile(e.path, int(e.size), e.lfs.sha256 if e.lfs else None, e.blob_id)
                for e in entries if isinstance(e, RepoFile)]

    def download(self, repo_id: str, filename: str, revision: str, local_dir: Path,
                 progress_bar: type | None = None) -> Path:
        # Resume: `hf_hub_download(local_dir=...)` skips a file whose metadata (`local_dir/.cache/
        # huggingface/download/<file>.metadata`) records this commit, so an interrupted component
        # restarts at its first missing file. Within one call, a dropped connection is retried up
        # to 5 times with an HTTP `Range` request from the bytes already written. The `.incomplete`
        # temp file is per process and deleted on failure (huggingface_hub >= 1.x): a killed
        # process restarts that one file from zero. Xet-backed files go through hf_xet instead.
        kwargs: dict[str, Any] = {"tqdm_class": progress_bar} if progress_bar is not None else {}
        with hub_errors(f"{repo_id}@{revision}/{filename}", self.endpoint):
            path = hf_hub_download(repo_id, filename, revision=revision, local_dir=local_dir,
                                   cache_dir=self.cache_dir, endpoint=self.endpoint, token=self.token, **kwargs)
        return Path(path)


def _mismatch(path: Path, what: str, expected: object, actual: object, hint: str = "") -> ChecksumMismatch:
    error = ChecksumMismatch(f"{path}: {what} mismatch: expected {expected}, got {actual}{hint}")
    error.path = path  # type: ignore[attr-defined]
    return error


def _check_file(path: Path, sizes: Iterable[int | None], sha256: str | None, cache: ShaCache | None,
                *, fresh: bool = False, hint: str = "") -> str | None:
    actual = path.stat().st_size
    for size in sizes:
        if size is not None and size != actual:
            raise _mismatch(path, "size", size, actual, hint)
    digest = (cache.sha256(path, fresh=fresh) if cache else sha256_file(path)) if sha256 else None
    if digest != sha256:
        raise _mismatch(path, "sha256", sha256, digest, hint)
    return digest


def verify_folder(folder: Path, comp: Component, *, level: Verify = "size", cache: ShaCache | None = None,
                  recorded: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Required files exist; known (and lock-recorded) sizes match; with `level="sha256"` hashes
    too (cached in `cache` when given). Never deletes anything."""
    folder = Path(folder)
    missing = [name for name in comp.required_files if not (folder / name).is_file()]
    if missing:
        raise ModelNotFound(f"{folder} is not a complete {comp.name!r} folder: missing {', '.join(missing)}")
    if level == "none":
        return
    recorded = recorded or {}
    for name in dict.fromkeys([*comp.files, *recorded]):
        known, rec = comp.files.get(name) or KnownFile(), recorded.get(name, {})
        if (folder / name).is_file():
            sha = (known.sha256 or rec.get("sha256")) if level == "sha256" else None
            _check_file(folder / name, (known.size, rec.get("size")), sha, cache)


def find_component_folder(directory: Path, comp: Component) -> Path:
    """`directory/<folder>`, or `directory` itself if named so or holding the required files."""
    directory = Path(directory)
    for candidate in (directory / comp.folder, directory):
        if candidate.is_dir() and (candidate.name == comp.folder
                                   or all((candidate / f).is_file() for f in comp.required_files)):
            return candidate
    raise ModelNotFound(f"no {comp.name!r} component in {directory}: expected {comp.folder}/ with "
                        f"{', '.join(comp.required_files)}; get it with `songstep download {comp.name} "
                        f"--root {directory}` or pass a hub repo id")


@dataclass
class _Run:
    root: Path
    hub: HubClient
    cache: ShaCache
    lock: LockFile
    offline: bool
    update: bool
    verify: Verify
    progress: ProgressFn | None


def _env_offline() -> bool:
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return hf_constants.is_offline_mode() or env in {"1", "ON", "YES", "TRUE"}


def _local_source(model: str | Path) -> Path | None:
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if isinstance(model, Path) or not _REPO_ID.match(str(model)):
        raise ModelNotFound(f"local directory {path} does not exist (and is not a hub repo id)")
    return None


def _for_source(comp: Component, repo_id: str, table: Mapping[str, Component]) -> Component:
    """A repo id that is not in the table is taken as a mirror of the main bundle (unpinned)."""
    if repo_id in {c.repo_id for c in table.values()} or comp.repo_id != MAIN_REPO:
        return comp
    return replace(comp, repo_id=repo_id, revision=None)


def _how_to_download(comp: Component, root: Path, reason: str) -> str:
    include = f" --include '{comp.subfolder}/*'" if comp.subfolder else ""
    target = root if comp.subfolder else root / comp.folder
    revision = f" --revision {comp.revision}" if comp.revision else ""
    return (f"{comp.name}: {root / comp.folder} is missing or incomplete and {reason}. Download it "
            f"once online: `songstep download {comp.name} --root {root}` (or `hf download {comp.repo_id}"
            f"{include}{revision} --local-dir {target}`), or pass a local directory holding {comp.folder}/.")


def _usable(folder: Path, comp: Component, entry: Mapping[str, Any] | None, run: _Run) -> bool:
    """Usable without the hub: a complete download, or a hand-placed copy with the required files."""
    if entry is None:
        return folder.is_dir() and all((folder / f).is_file() for f in comp.required_files)
    if entry.get("status") != "complete" or entry.get("repo") != comp.repo_id:
        return False
    if any(not (folder / n).is_file() or (folder / n).stat().st_size != r.get("size")
           for n, r in entry.get("files", {}).items()):
        return False
    if comp.revision and entry.get("commit") != comp.revision:
        if not (run.offline or _env_offline()):
            return False
        logger.warning("%s: offline, using commit %s (pinned: %s)", comp.name, entry.get("commit"), comp.revision)
    return True


def _verify_existing(folder: Path, comp: Component, entry: Mapping[str, Any] | None, run: _Run) -> None:
    if entry is None:  # the user's own folder (another revision, a fine-tune): used as it is
        verify_folder(folder, comp, level="none")
        preflight.tell_used_as_is(folder, comp.subfolder, comp.revision)
        return
    try:  # our own download: checked against the table and the lock
        verify_folder(folder, comp, level=run.verify, cache=run.cache, recorded=entry.get("files"))
    except ChecksumMismatch as e:
        _discard(e.path, run.cache)  # type: ignore[attr-defined]
        run.lock.invalidate(comp.name)
        raise ChecksumMismatch(f"{e}; removed it, run again to download it") from e


def _target_commit(comp: Component, run: _Run) -> str:
    """The pinned commit, else the locked one (if the hub still has it), else today's `main`."""
    if comp.revision:
        return comp.revision
    locked = run.lock.repos.get(comp.repo_id)
    remote = run.hub.resolve_revision(comp.repo_id, "main")
    if locked is None or locked == remote:
        return remote
    if run.update:
        logger.warning("%s: lock of %s moves from %s to %s", comp.name, comp.repo_id, locked, remote)
        return remote
    try:
        run.hub.resolve_revision(comp.repo_id, locked)
    except ModelNotFound as e:
        raise DownloadError(
            f"{comp.repo_id}: {run.lock.path} pins commit {locked} (first download) but the hub no longer "
            f"has it ('main' is now {remote}). Refusing to switch silently: pass update=True (`songstep "
            f"download {comp.name} --update`) or delete the {comp.repo_id!r} entries of the lock file.") from e
    logger.warning("%s: %s 'main' moved from %s to %s; keeping the locked commit (update=True to move)",
                   comp.name, comp.repo_id, locked, remote)
    return locked


def _relative(comp: Component, repo_path: str) -> str:
    return repo_path[len(comp.subfolder) + 1:] if comp.subfolder else repo_path


def _remote_files(comp: Component, commit: str, run: _Run) -> list[RemoteFile]:
    """The hub listing, checked against the table and the lock before any byte is downloaded."""
    prefix = f"{comp.subfolder}/" if comp.subfolder else ""
    listing = [f for f in run.hub.list_files(comp.repo_id, commit, comp.subfolder) if f.path.startswith(prefix)
               and (_relative(comp, f.path) in comp.files or not f.path.endswith(PICKLE_SUFFIXES))]  # no pickles
    by_name = {_relative(comp, f.path): f for f in listing}
    missing = [name for name in comp.required_files if name not in by_name]
    if missing:
        raise ModelNotFound(f"{comp.repo_id}@{commit}: {comp.folder}/ has no {', '.join(missing)}")
    entry = run.lock.components.get(comp.name) or {}
    recorded = entry.get("files", {}) if entry.get("commit") == commit else {}
    for name, remote in by_name.items():
        known, rec = comp.files.get(name), recorded.get(name, {})
        where = f"{comp.repo_id}@{commit}/{remote.path} (hub listing)"
        for what, expected, actual in (
            ("size", known and known.size, remote.size), ("sha256", known and known.sha256, remote.sha256),
            ("size (lock)", rec.get("size"), remote.size), ("sha256 (lock)", rec.get("sha256"), remote.sha256),
        ):
            if expected and actual and expected != actual:
                raise _mismatch(Path(where), what, expected, actual, "; nothing was downloaded")
    return listing


def _discard(path: Path, cache: ShaCache, local_dir: Path | None = None, repo_path: str | None = None) -> None:
    """Delete a bad file, its cached hash and huggingface_hub's download metadata for it."""
    cache.forget(path)
    path.unlink(missing_ok=True)
    if local_dir is not None and repo_path:
        meta = local_dir / ".cache" / "huggingface" / "download" / repo_path
        for suffix in (".metadata", ".lock"):
            meta.with_name(meta.name + suffix).unlink(missing_ok=True)
    logger.warning("removed %s", path)


def _verify_download(path: Path, remote: RemoteFile, known: KnownFile | None, cache: ShaCache) -> dict[str, Any]:
    known, hint = known or KnownFile(), " after download"
    digest = _check_file(path, (known.size, remote.size), known.sha256 or remote.sha256, cache, fresh=True, hint=hint)
    size = path.stat().st_size
    if digest is None and size <= _SMALL_FILE:  # small git (non-LFS) file: check its git oid, record sha256
        oid = git_blob_sha1(path)
        if remote.git_oid and oid != remote.git_oid:
            raise _mismatch(path, "git oid", remote.git_oid, oid, hint)
        digest = cache.sha256(path, fresh=True)
    return {"size": size, "sha256": digest}


def _fetch(comp: Component, remote: RemoteFile, commit: str, run: _Run, index: int, count: int) -> dict[str, Any]:
    name = _relative(comp, remote.path)
    local_dir = run.root if comp.subfolder else run.root / comp.folder
    target = run.root / comp.folder / name
    if target.is_file() and target.stat().st_size != remote.size:  # stale or truncated: fetch again
        _discard(target, run.cache, local_dir, remote.path)
    bar = preflight.progress_bar(run.progress, comp.name, name, index, count)  # never huggingface_hub's bars
    path = run.hub.download(comp.repo_id, remote.path, commit, local_dir, progress_bar=bar)
    try:
        record = _verify_download(path, remote, comp.files.get(name), run.cache)
    except ChecksumMismatch as e:
        _discard(path, run.cache, local_dir, remote.path)
        raise ChecksumMismatch(f"{e}; the file was removed") from e
    if run.progress:
        run.progress(DownloadProgress(comp.name, name, index, count, record["size"], record["size"]))
    return record


def _from_hub(comp: Component, run: _Run) -> Path:
    folder = run.root / comp.folder
    entry = run.lock.components.get(comp.name)
    if not run.update and _usable(folder, comp, entry, run):
        _verify_existing(folder, comp, entry, run)
        return folder
    if run.offline or _env_offline():
        reason = "offline mode is on (offline=True or HF_HUB_OFFLINE=1)"
        raise DownloadError(_how_to_download(comp, run.root, reason))
    preflight.check_name_resolves(getattr(run.hub, "endpoint", None), folder, comp.required_files)
    try:
        commit = _target_commit(comp, run)
        listing = _remote_files(comp, commit, run)
    except DownloadError as e:
        if not isinstance(e.__cause__, (*transport_errors(), hf.LocalEntryNotFoundError)):
            raise
        raise DownloadError(_how_to_download(comp, run.root, f"the hub cannot be reached ({e})")) from e
    preflight.tell_downloading(comp.name, len(listing), sum(f.size for f in listing), comp.repo_id, commit, folder)
    run.lock.mark(comp, commit)
    records = {_relative(comp, f.path): _fetch(comp, f, commit, run, i, len(listing))
               for i, f in enumerate(listing)}
    run.lock.mark(comp, commit, records)
    return folder


def resolve(model: str | Path, component: str, *, root: str | Path, offline: bool = False,
            progress: ProgressFn | None = None, update: bool = False, verify: Verify = "size",
            hub: HubClient | None = None, table: Mapping[str, Component] | None = None) -> Path:
    """A verified local folder for `component`. `model`: a local directory (checkpoints root or the
    component folder itself) or a hub repo id (one outside the table = mirror of the main bundle).
    Hub files go to `root/<folder>`; `update=True` moves an unpinned repo's lock to today's `main`.
    `verify` ("none" | "size" | "sha256") is for files already on disk; new downloads are always
    checked against every known size and hash."""
    table = table if table is not None else COMPONENTS
    if component not in table:
        raise ModelNotFound(f"unknown component {component!r}; known: {', '.join(table)}")
    comp, root = table[component], Path(root).expanduser()
    cache = ShaCache(root / SHA_CACHE_NAME)
    local = _local_source(model)
    if local is not None:
        folder = find_component_folder(local, comp)
        verify_folder(folder, comp, level=verify, cache=cache)
        return folder
    run = _Run(root, hub or HfHubClient(), cache, LockFile(root / LOCK_NAME), offline, update, verify, progress)
    return _from_hub(_for_source(comp, str(model), table), run)


def download(components: Iterable[str] = DEFAULT_COMPONENTS, root: str | Path = "checkpoints", *,
             source: str = MAIN_REPO, offline: bool = False, progress: ProgressFn | None = None,
             update: bool = False, verify: Verify = "size", hub: HubClient | None = None,
             table: Mapping[str, Component] | None = None) -> dict[str, Path]:
    """Download (or check) several components into `root`; returns name -> folder."""
    hub = hub if hub is not None else HfHubClient()
    return {name: resolve(source, name, root=root, offline=offline, progress=progress, update=update,
                          verify=verify, hub=hub, table=table) for name in components}
