"""Property-based tests from the app's own OpenAPI spec (schemathesis, bounded examples), over
real HTTP to uvicorn on 127.0.0.1, with a fake fast pipeline: no request may give a 5xx, and every
response must match its documented schema."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

from songstep.server.app import create_app  # noqa: E402
from songstep.server.settings import ServerSettings  # noqa: E402
from tests.server.fakes import FakePipeline  # noqa: E402
from tests.server.live import live_server  # noqa: E402

SPEC = create_app(lambda: FakePipeline()).openapi()  # the spec needs no pipeline (built at startup only)
SCHEMA = schemathesis.openapi.from_dict(SPEC)
OPERATIONS = {op.ok().label: op.ok() for op in SCHEMA.get_all_operations() if not op.ok().path.endswith("/events")}


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    app = create_app(lambda: FakePipeline(), ServerSettings(data_dir=tmp_path_factory.mktemp("st"), chat_timeout=30))
    with live_server(app) as base:
        yield base


def test_every_route_is_covered() -> None:
    paths = {op.path for op in OPERATIONS.values()}
    assert {"/release_task", "/query_result", "/format_input", "/create_random_sample", "/v1/create_sample",
            "/v1/models", "/v1/model_inventory", "/v1/stats", "/v1/audio", "/health", "/v1/chat/completions",
            "/v2/jobs", "/v2/jobs/{job_id}", "/v2/jobs/{job_id}/cancel", "/v2/jobs/{job_id}/audio/{index}"} <= paths


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_no_server_errors_and_responses_match_the_schema(base_url, label) -> None:
    operation = OPERATIONS[label]

    @given(case=operation.as_strategy())
    @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case) -> None:
        case.call_and_validate(base_url=base_url, checks=[not_a_server_error, response_schema_conformance],
                               timeout=60)

    check()
