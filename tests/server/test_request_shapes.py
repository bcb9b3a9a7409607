"""Every upstream POST route in every body shape upstream accepts (JSON, urlencoded form,
multipart form), with a fake pipeline and a fake planner that records what it was asked: the
same answer (the envelope) and the same arguments whatever the shape."""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from songstep.planner.types import SongDescription  # noqa: E402
from songstep.server.app import create_app  # noqa: E402
from songstep.server.settings import ServerSettings  # noqa: E402
from tests.server.fakes import FakePipeline  # noqa: E402


class FakePlanner:
    name = "acestep-5Hz-lm-0.6B"

    def __init__(self):
        self.calls = []

    def format(self, caption, lyrics="", **kw):
        self.calls.append(("format", caption, lyrics, kw))
        return SongDescription(caption=caption + ", enhanced", lyrics=lyrics, bpm=kw.get("bpm") or 100,
                               keyscale=kw.get("keyscale") or "D minor", timesignature="4",
                               duration=int(kw.get("duration") or 30), language=kw.get("language") or "en")

    def create_sample(self, description, **kw):
        self.calls.append(("sample", description, kw))
        return SongDescription(caption="from " + description, lyrics="[Verse]\nhey", bpm=128, keyscale="E major",
                               timesignature="4", duration=20, language="en", instrumental=kw["instrumental"])


def shapes(client, path, fields):
    """The same fields as JSON, as a urlencoded form and as a multipart form."""
    flat = {k: (json.dumps(v) if isinstance(v, dict | list) else str(v).lower() if isinstance(v, bool) else str(v))
            for k, v in fields.items()}
    yield client.post(path, json=fields)
    yield client.post(path, data=flat)
    yield client.post(path, files={k: (None, v) for k, v in flat.items()})


@pytest.fixture()
def env(tmp_path):
    pipe = FakePipeline()
    pipe.planner = FakePlanner()
    with TestClient(create_app(lambda: pipe, ServerSettings(data_dir=tmp_path))) as c:
        yield c, pipe


def data(r):
    body = r.json()
    assert r.status_code == 200 and set(body) == {"data", "code", "error", "timestamp", "extra"}, body
    return body["data"]


def test_release_task_and_query_result_shapes(env) -> None:
    c, pipe = env
    fields = {"prompt": "funk", "metas": {"bpm": 110, "keyscale": "C Major"}, "audioDuration": 12, "thinking": False,
              "batch_size": 1, "use_random_seed": False, "seed": 3, "timeSignature": "4/4", "vocal_language": "fr"}
    ids = [data(r)["task_id"] for r in shapes(c, "/release_task", fields)]
    for _ in range(500):
        items = [data(r) for r in shapes(c, "/query_result", {"task_id_list": ids})]
        if all(i["status"] == 1 for i in items[0]):
            break
        time.sleep(0.02)
    assert items[0] == items[1] == items[2] and [i["task_id"] for i in items[0]] == ids
    reqs = pipe.requests
    assert len(reqs) == 3 and reqs[0] == reqs[1] == reqs[2]
    assert (reqs[0].caption, reqs[0].bpm, reqs[0].keyscale, reqs[0].timesignature, reqs[0].duration, reqs[0].seed,
            reqs[0].language) == ("funk", 110, "C major", "4", 12.0, 3, "fr")


def test_planner_route_shapes(env) -> None:
    c, pipe = env
    fmt = {"prompt": "pop rock", "lyrics": "la la", "temperature": 0.7,
           "param_obj": json.dumps({"duration": 40, "language": "de", "key": "Am", "bpm": 90})}
    answers = [data(r) for r in shapes(c, "/format_input", fmt)]
    assert answers[0] == answers[1] == answers[2] == {
        "caption": "pop rock, enhanced", "lyrics": "la la", "bpm": 90, "key_scale": "A minor", "time_signature": "4",
        "duration": 40, "vocal_language": "de", "instrumental": False}
    kw = pipe.planner.calls[0][3]
    assert (kw["temperature"], kw["language"], kw["duration"]) == (0.7, "de", 40.0)
    sample = {"query": "festival anthem", "instrumental": True, "vocal_language": "en"}
    answers = [data(r) for r in shapes(c, "/v1/create_sample", sample)]
    assert answers[0] == answers[1] == answers[2]
    assert answers[0]["caption"] == "from festival anthem" and answers[0]["instrumental"] is True
    for r in shapes(c, "/create_random_sample", {"sample_type": "custom_mode"}):
        assert "caption" in data(r)


def test_sample_mode_and_format_mode_jobs_use_the_planner(env) -> None:
    c, pipe = env
    a = data(c.post("/release_task", json={"sample_query": "a techno track", "batch_size": 1}))["task_id"]
    b = data(c.post("/release_task", data={"prompt": "lofi", "lyrics": "oh", "use_format": "true", "bpm": "70",
                                           "batch_size": "1"}))["task_id"]
    for _ in range(500):
        items = data(c.post("/query_result", json={"task_id_list": [a, b]}))
        if all(i["status"] == 1 for i in items):
            break
        time.sleep(0.02)
    first, second = pipe.requests
    assert (first.caption, first.bpm, first.lyrics, first.duration) == ("from a techno track", 128, "[Verse]\nhey", 20.0)
    assert (second.caption, second.bpm, second.keyscale) == ("lofi, enhanced", 70, "D minor")
