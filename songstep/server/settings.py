"""Server settings (one frozen dataclass, filled by `songstep serve` or by tests)."""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from songstep.errors import InvalidRequest


def hash_key(key: str) -> str:
    """API keys are kept only as their sha256 hex digest."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def read_keys_file(path: str | Path) -> list[str]:
    """One key per line; blank lines and `#` comments are skipped. A line `sha256:<hex>` is an
    already hashed key (so the file need not hold the secret itself)."""
    keys = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keys.append(line)
    return keys


def key_hashes(keys: list[str]) -> tuple[str, ...]:
    out = []
    for key in keys:
        if key.startswith("sha256:") and len(key) == 71:
            out.append(key[7:].lower())
        elif len(key) < 8:
            raise InvalidRequest("an API key must have at least 8 characters")
        else:
            out.append(hash_key(key))
    return tuple(out)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerSettings:
    data_dir: Path = Path("songstep-data")
    api_key_hashes: tuple[str, ...] = ()
    queue_size: int = 200
    on_restart: str = "requeue"  # "requeue" interrupted jobs (up to max_attempts runs) or "fail" them
    max_attempts: int = 2
    keep_results: int = 1000  # finished jobs kept (with their files); older ones are deleted
    max_upload_bytes: int = 50 * 2**20
    max_upload_seconds: float = 600.0
    request_timeout: float = 60.0  # seconds for any non-streaming request
    job_timeout: float = 3600.0  # a job running longer is cancelled and fails
    chat_timeout: float = 600.0  # /v1/chat/completions waits this long for its job
    cors_origins: tuple[str, ...] = ()  # CORS off unless origins are given
    retry_after: int = 10  # seconds, in 429 answers
    service_name: str = "songstep API"
    lm_max_new_tokens: int | None = None  # cap on the planner's text (format, sample mode); None: its own
    job_store: str = ""  # job store URL (postgresql://...); empty: SQLite under data_dir

    def __post_init__(self) -> None:
        if self.on_restart not in ("requeue", "fail"):
            raise InvalidRequest(f"on_restart must be 'requeue' or 'fail', got {self.on_restart!r}")
        if self.queue_size < 1:
            raise InvalidRequest("queue_size must be at least 1")

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_key_hashes)

    @property
    def max_body_bytes(self) -> int:
        """Whole request bodies: two uploads (base64 in chat adds a third) plus the fields."""
        return 3 * self.max_upload_bytes + 2**20

    @property
    def db_path(self) -> Path:
        return Path(self.data_dir) / "jobs.sqlite3"

    @property
    def job_store_url(self) -> str:
        return self.job_store or str(self.db_path)

    @property
    def results_dir(self) -> Path:
        return Path(self.data_dir) / "results"

    @property
    def uploads_dir(self) -> Path:
        return Path(self.data_dir) / "uploads"

    @property
    def loras_dir(self) -> Path:
        """The only folder `/v1/lora/load` reads adapters from (a client names one inside it)."""
        return Path(self.data_dir) / "loras"
