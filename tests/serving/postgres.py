"""A real PostgreSQL server for the job-store tests: `$SONGSTEP_TEST_POSTGRES_URL` when set (CI
may run its own server), else a throwaway cluster started by `start_postgres.sh` in a temporary
folder on a free 127.0.0.1 port (skipped when Debian's postgresql binaries are missing).
`postgres_db` gives each test a fresh database."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).with_name("start_postgres.sh")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """The admin URL of a running PostgreSQL server."""
    pytest.importorskip("psycopg")
    if os.environ.get("SONGSTEP_TEST_POSTGRES_URL"):
        yield os.environ["SONGSTEP_TEST_POSTGRES_URL"]
        return
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    folder = tempfile.mkdtemp(prefix="songstep-pg-")
    os.chmod(folder, 0o755)
    try:
        out = subprocess.run([str(_SCRIPT), folder, str(_free_port())], check=True, capture_output=True,
                             text=True, timeout=120)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"could not start PostgreSQL: {exc.stderr}") from exc
    try:
        yield out.stdout.strip()
    finally:
        as_user = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
        subprocess.run([*as_user, str(Path(bins[-1]).with_name("pg_ctl")), "-D", f"{folder}/data", "stop",
                        "-m", "fast"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_db(postgres_server):
    """The URL of a new, empty database (dropped after the test)."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield postgres_server.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
