"""Fixtures of the serving tests: a real PostgreSQL server (tests/serving/postgres.py)."""

from tests.serving.postgres import postgres_db, postgres_server  # noqa: F401
