"""Every upstream route, with upstream's request shapes (JSON, form, multipart) and spellings, on
the tiny random pipeline (CPU) through FastAPI's TestClient: the envelope, the status codes and
the job status transitions 0 → 1 / 2."""

from __future__ import annotations

import base64
import io
import json
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

import soundfile as sf  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from songstep.server.app import create_app  # noqa: E402
from songstep.server.settings import ServerSettings  # noqa: E402

ENVELOPE = {"data", "code", "error", "timestamp", "extra"}
FAST = {"audio_duration": 10, "inference_steps": 2, "batch_size": 1}


@pytest.fixture(scope="module")
def client(tiny_tree, tmp_path_factory):
    from songstep.pipeline import Pipeline

    settings = ServerSettings(data_dir=tmp_path_factory.mktemp("data"))
    app = create_app(lambda: Pipeline.from_pretrained(tiny_tree, device="cpu", lm="none"), settings)
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def planner_client(tiny_tree, tiny_lm_dir, tmp_path_factory):
    from songstep.pipeline import Pipeline

    settings = ServerSettings(data_dir=tmp_path_factory.mktemp("data_lm"), lm_max_new_tokens=24)
    app = create_app(lambda: Pipeline.from_pretrained(tiny_tree, device="cpu", lm=str(tiny_lm_dir)), settings)
    with TestClient(app) as c:
        yield c


def ok(response, code: int = 200) -> dict:
    body = response.json()
    assert response.status_code == code, body
    assert set(body) == ENVELOPE and body["code"] == code
    assert (body["error"] is None) == (code == 200) and isinstance(body["timestamp"], int)
    return body["data"]


def query(client, task_id: str) -> dict:
    items = ok(client.post("/query_result", json={"task_id_list": [task_id]}))
    assert len(items) == 1 and items[0]["task_id"] == task_id
    return items[0]


def wait(client, task_id: str, polls: int = 1200) -> tuple[list[int], dict]:
    seen = []
    for _ in range(polls):
        item = query(client, task_id)
        seen.append(item["status"])
        if item["status"] != 0:
            return seen, item
        time.sleep(0.05)
    raise AssertionError(f"job {task_id} still unfinished: {item}")


def submitted(response) -> str:
    data = ok(response)
    assert data["status"] == "queued" and isinstance(data["queue_position"], int)
    return data["task_id"]


def audio_of(client, take: dict) -> tuple:
    assert take["file"].startswith("/v1/audio?path=")
    r = client.get(take["file"])
    assert r.status_code == 200 and r.headers["content-type"].startswith("audio/")
    data, rate = sf.read(io.BytesIO(r.content))
    return data, rate, r.content


def wav_bytes(seconds: float = 2.0) -> bytes:
    import numpy as np

    t = np.arange(int(48000 * seconds)) / 48000
    buf = io.BytesIO()
    sf.write(buf, np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], 1) * 0.3, 48000, format="WAV")
    return buf.getvalue()


def test_release_task_json_then_query_goes_0_to_1_and_the_file_is_the_song(client) -> None:
    body = {"prompt": "lofi hip hop", "lyrics": "[Instrumental]", "use_random_seed": False, "seed": 5,
            "audio_format": "wav", "key_scale": "C major", "time_signature": "4", "bpm": 90, **FAST}
    task = submitted(client.post("/release_task", json=body))
    seen, item = wait(client, task)
    assert seen[0] == 0 and seen[-1] == 1 and set(seen) <= {0, 1}
    takes = json.loads(item["result"])
    assert len(takes) == 1
    take = takes[0]
    assert take["status"] == 1 and take["prompt"] == "lofi hip hop" and take["seed_value"] == "5"
    assert take["dit_model"] == "acestep-v15-turbo" and take["metas"]["bpm"] == 90
    assert take["metas"]["keyscale"] == "C major" and take["metas"]["timesignature"] == "4"
    data, rate, _ = audio_of(client, take)
    assert rate == 48000 and data.shape[1] == 2 and abs(data.shape[0] / rate - 10.0) < 0.1


def test_same_seed_same_audio_each_job_stands_alone(client) -> None:
    body = {"prompt": "ambient", "use_random_seed": False, "seed": 11, "audio_format": "wav", **FAST}
    first = submitted(client.post("/release_task", json=body))
    other = submitted(client.post("/release_task", json={**body, "seed": 12, "prompt": "metal"}))
    again = submitted(client.post("/release_task", json=body))
    waves = [audio_of(client, json.loads(wait(client, t)[1]["result"])[0])[0] for t in (first, other, again)]
    assert (waves[0] == waves[2]).all() and not (waves[0] == waves[1]).all()


def test_release_task_form_with_camel_case(client) -> None:
    form = {"caption": "piano", "audioDuration": "10", "inferenceSteps": "2", "batchSize": "2",
            "vocalLanguage": "en", "timeSignature": "3", "useRandomSeed": "false", "seed": "3", "audioFormat": "flac"}
    seen, item = wait(client, submitted(client.post("/release_task", data=form)))
    takes = json.loads(item["result"])
    assert seen[-1] == 1 and len(takes) == 2 and takes[0]["seed_value"] == "3,4"
    assert takes[1]["file"].endswith("/1.flac") and takes[0]["metas"]["timesignature"] == "3"


@pytest.mark.parametrize("field,task,extra", [
    ("src_audio", "cover", {"audio_cover_strength": "0.5"}),
    ("ctx_audio", "repaint", {"repainting_start": "0.5", "repainting_end": "1.5"}),
    ("reference_audio", "text2music", {"audio_duration": "10"}),
    ("ref_audio", "text2music", {"audio_duration": "10"}),
])
def test_release_task_multipart_uploads(client, field, task, extra) -> None:
    form = {"prompt": "remix", "task_type": task, "inference_steps": "2", "batch_size": "1", **extra}
    r = client.post("/release_task", data=form, files={field: ("song.wav", wav_bytes(), "audio/wav")})
    seen, item = wait(client, submitted(r))
    assert seen[-1] == 1, item
    data, rate, _ = audio_of(client, json.loads(item["result"])[0])
    if task != "text2music":  # edits keep the source's length
        assert abs(data.shape[0] / rate - 2.0) < 0.1


def test_src_audio_path_names_an_earlier_result_never_a_server_path(client) -> None:
    first = json.loads(wait(client, submitted(client.post("/release_task", json={"prompt": "a", **FAST})))[1]["result"])
    r = client.post("/release_task", json={"prompt": "b", "task_type": "cover", "src_audio_path": first[0]["file"],
                                           "inference_steps": 2, "batch_size": 1})
    assert wait(client, submitted(r))[0][-1] == 1
    for path in ("/etc/passwd", "../../jobs.sqlite3", "/v1/audio?path=../../jobs.sqlite3"):
        r = client.post("/release_task", json={"prompt": "c", "task_type": "cover", "src_audio_path": path})
        ok(r, 403)


def test_errors_use_the_envelope_and_upstream_codes(client) -> None:
    assert "not loaded" in client.post("/release_task", json={"prompt": "x", "model": "acestep-v15-xl"}).json()["error"]
    ok(client.post("/release_task", json={"prompt": "x", "model": "acestep-v15-xl"}), 404)
    ok(client.post("/release_task", json={"prompt": "x", "lm_model_path": "acestep-5Hz-lm-4B"}), 404)
    msg = client.post("/release_task", json={"bpm": 5}).json()["error"]
    assert "bpm" in msg and "greater than or equal to 30" in msg
    ok(client.post("/release_task", json={"bpm": 5}), 422)
    ok(client.post("/release_task", json={"task_type": "lego", "track_name": "drums", **FAST}), 400)  # turbo model
    ok(client.post("/release_task", content=b"[1, 2]", headers={"content-type": "application/json"}), 400)
    ok(client.post("/release_task", content=b"x", headers={"content-type": "text/plain"}), 400)
    items = ok(client.post("/query_result", json={"task_id_list": json.dumps(["0" * 32])}))
    assert items[0]["status"] == 2


def test_cancelled_job_reports_status_2(client) -> None:
    tasks = [submitted(client.post("/release_task", json={"prompt": f"q{i}", **FAST})) for i in range(3)]
    last = client.post(f"/v2/jobs/{tasks[-1]}/cancel")
    assert last.status_code == 200 and last.json()["status"] in ("cancelled", "running")
    seen, item = wait(client, tasks[-1])
    if last.json()["status"] == "cancelled":
        assert seen == [2] and "cancelled" in json.loads(item["result"])[0]["error"]
    for t in tasks[:-1]:
        assert wait(client, t)[0][-1] == 1


def test_info_routes(client) -> None:
    assert ok(client.get("/health")) == {"status": "ok", "service": "songstep API", "version": "1.0"}
    models = ok(client.get("/v1/models"))
    assert models["default_model"] == "acestep-v15-turbo"
    assert models["models"][0] == {"name": "acestep-v15-turbo", "is_default": True, "is_loaded": True,
                                   "supported_task_types": ["text2music", "cover", "repaint"]}
    inventory = ok(client.get("/v1/model_inventory"))
    names = {m["name"]: m["is_loaded"] for m in inventory["models"]}
    assert names == {"acestep-v15-turbo": True, "acestep-v15-base": False}
    stats = ok(client.get("/v1/stats"))
    assert set(stats) == {"jobs", "queue_size", "queue_maxsize", "avg_job_seconds"}
    assert set(stats["jobs"]) == {"total", "queued", "running", "succeeded", "failed"}
    assert stats["queue_maxsize"] == 200 and stats["jobs"]["total"] == sum(
        stats["jobs"][k] for k in ("queued", "running", "succeeded", "failed"))
    sample = ok(client.post("/create_random_sample", json={"sample_type": "custom_mode"}))
    assert {"caption", "lyrics", "bpm", "key_scale", "time_signature", "duration"} <= set(sample)
    assert "description" in ok(client.post("/create_random_sample", data={"sample_type": "simple_mode"}))
    ok(client.post("/format_input", json={"prompt": "x"}), 400)  # no planner LM in this server
    metrics = client.get("/metrics").text
    assert "songstep_queue_depth" in metrics and 'songstep_jobs{state="succeeded"}' in metrics
    assert 'songstep_stage_seconds_count{stage="dit"}' in metrics


def test_chat_completions_text_and_base64_audio(client) -> None:
    r = client.post("/v1/chat/completions", json={
        "model": "acestep/acestep-v15-turbo", "seed": 9, "audio_config": {"duration": 10, "format": "wav", "bpm": 100},
        "messages": [{"role": "user", "content": "<prompt>calm piano</prompt><lyrics>[Verse]\nla la</lyrics>"}]})
    body = r.json()
    assert r.status_code == 200 and body["object"] == "chat.completion", body
    message = body["choices"][0]["message"]
    assert "**Caption:** calm piano" in message["content"] and "la la" in message["content"]
    url = message["audio"][0]["audio_url"]["url"]
    assert url.startswith("data:audio/wav;base64,")
    data, rate = sf.read(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert rate == 48000 and abs(len(data) / rate - 10) < 0.1
    audio_in = {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav_bytes()).decode(), "format": "wav"}}
    r = client.post("/v1/chat/completions", json={
        "task_type": "cover", "stream": True,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "make it jazz"}, audio_in]}]})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    audio = [c for c in chunks if "audio" in c["choices"][0]["delta"]][0]["choices"][0]["delta"]["audio"]
    data, rate = sf.read(io.BytesIO(base64.b64decode(audio[0]["audio_url"]["url"].split(",", 1)[1])))
    assert abs(len(data) / rate - 2.0) < 0.1  # a cover keeps the source's length
    bad = {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "%%%"}}]}]}
    ok(client.post("/v1/chat/completions", json=bad), 400)


def test_planner_routes(planner_client) -> None:
    c = planner_client
    data = ok(c.post("/format_input", json={"prompt": "pop rock", "lyrics": "Walking down the street",
                                            "param_obj": json.dumps({"duration": 30, "language": "en", "bpm": 120})}))
    assert set(data) >= {"caption", "lyrics", "bpm", "key_scale", "time_signature", "duration", "vocal_language"}
    assert data["bpm"] == 120 and data["duration"] == 30 and data["vocal_language"] == "en"
    data = ok(c.post("/v1/create_sample", json={"query": "a soft love song", "instrumental": True,
                                                "vocal_language": "en"}))
    assert data["instrumental"] is True and data["vocal_language"] == "en" and isinstance(data["caption"], str)
    ok(c.post("/v1/create_sample", json={}), 400)
    body = {"sample_query": "a short jingle", "bpm": 100, "key_scale": "C major", "time_signature": "4", **FAST}
    seen, item = wait(c, submitted(c.post("/release_task", json=body)))
    assert seen[-1] == 1, item
    assert json.loads(item["result"])[0]["lm_model"] == c.get("/v1/models").json()["data"]["lm_models"][0]["name"]
