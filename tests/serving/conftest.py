"""Fixtures of the serving tests: a real PostgreSQL server (tests/serving/postgres.py).

Ray's local cluster binds its servers (GCS, raylets, workers, agents) to the node's address, on every
interface; with cluster mode off (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, its single-machine mode)
the node address is 127.0.0.1 and every one of them listens on loopback only, as servers under test
must. Set before any test starts Ray.
"""

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from tests.serving.postgres import postgres_db, postgres_server  # noqa: E402, F401
