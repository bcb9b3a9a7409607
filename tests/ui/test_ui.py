"""The UI without a browser: labels, controls derived from the request type, the spectrogram, and
the Generate handler against the real job service (queue position, results, readable errors),
the `--api` mount and the key login. A fast fake pipeline stands in for the model here; the
browser test runs the tiny real one."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("gradio")

from songstep.config import tiny_config  # noqa: E402
from songstep.errors import InvalidRequest  # noqa: E402
from songstep.request import take_seeds  # noqa: E402
from songstep.ui import controls  # noqa: E402
from songstep.ui.i18n import LANGS, TABLE, t  # noqa: E402
from songstep.ui.results import HEIGHT, spectrogram  # noqa: E402


# -- labels ------------------------------------------------------------------------------------------
def test_every_label_in_every_language_with_the_same_placeholders() -> None:
    for key, texts in TABLE.items():
        assert len(texts) == len(LANGS) and all(s.strip() for s in texts), key
        names = [sorted(re.findall(r"{(\w+)}", s)) for s in texts]
        assert all(n == names[0] for n in names), key
    assert t("queued", "zh", pos=3) == "排队中：第 3 位"
    assert t("generate", "xx") == "Generate"  # unknown language: English
    with pytest.raises(KeyError):
        t("no-such-label")


# -- controls ----------------------------------------------------------------------------------------
def test_controls_cover_the_request_and_follow_its_tasks() -> None:
    controls.check_controls()
    assert controls.visible("duration", "text2music") and not controls.visible("duration", "repaint")
    assert not controls.visible("source_audio", "text2music") and controls.visible("source_audio", "cover")
    assert controls.visible("tracks", "extract") and not controls.visible("tracks", "cover")
    assert controls.visible("repaint_end", "lego") and controls.visible("seed", "extract")
    assert controls.bounds("batch") == (1, 8) and controls.default("cfg_end") == 1.0


def test_request_fields_from_control_values() -> None:
    values = {"caption": "lofi", "duration": "10", "bpm": "120", "steps": "", "shift": " ", "seed": 7.0,
              "tracks": ["drums"], "cfg_start": 0.2, "cfg_end": None, "repaint_end": "6", "keyscale": ""}
    fields = controls.request_fields("text2music", values)
    assert fields == {"task": "text2music", "caption": "lofi", "duration": 10.0, "bpm": 120, "seed": 7,
                      "cfg_interval": (0.2, 1.0)}
    assert isinstance(fields["bpm"], int)
    repaint = controls.request_fields("repaint", values)
    assert "duration" not in repaint and repaint["repaint_end"] == 6.0 and "tracks" not in repaint
    assert controls.request_fields("extract", values)["tracks"] == ("drums",)
    with pytest.raises(InvalidRequest, match="bpm must be a whole number"):
        controls.request_fields("text2music", {"bpm": "12.5"})
    with pytest.raises(InvalidRequest, match="'fast' is not a number"):
        controls.request_fields("text2music", {"bpm": "fast"})
    with pytest.raises(InvalidRequest, match="duration must be between 10 and 600 seconds"):
        controls.validate(controls.request_fields("text2music", {"duration": "5"}))


# -- spectrogram ---------------------------------------------------------------------------------------
def test_spectrogram_puts_a_tone_at_its_frequency() -> None:
    sr, freq = 48000, 6000.0
    t_ = torch.arange(sr * 2) / sr
    wave = torch.stack([torch.sin(2 * math.pi * freq * t_)] * 2) * 0.5
    image = spectrogram(wave, sr)
    assert image.dtype.name == "uint8" and image.shape[0] == HEIGHT and image.shape[2] == 3
    brightness = image.astype(float).sum(axis=(1, 2))
    expected_row = (HEIGHT - 1) * (1 - freq / (sr / 2))  # low frequencies at the bottom
    assert abs(int(brightness.argmax()) - expected_row) <= 2
    silent = spectrogram(torch.zeros(2, 4800), sr)
    assert silent.shape[0] == HEIGHT  # no division by zero on silence


# -- the Generate handler on the job service ---------------------------------------------------------------
class FakePipe:
    """The Pipeline surface the job worker uses; one short sine per take."""

    def __init__(self):
        self.components = SimpleNamespace(variant="turbo", folders={"turbo": Path("/x/acestep-v15-turbo")},
                                          dit=SimpleNamespace(config=tiny_config(is_turbo=True)))
        self.planner = None
        self.requests = []

    def run(self, request, *, progress=None, **kwargs):
        self.requests.append(request)
        progress and progress("dit", 1, 1)
        seeds = take_seeds(request.seed, request.batch)
        t_ = torch.arange(4800) / 48000
        audio = torch.stack([torch.sin(2 * math.pi * (200 + 10 * i) * t_).repeat(2, 1) * 0.5 for i in range(len(seeds))])
        return SimpleNamespace(audio=audio, sample_rate=48000, seeds=seeds, timings={},
                               params={"caption": request.caption, "lyrics": request.lyrics, "seconds": 0.1})


@pytest.fixture()
def ui_app(tmp_path):
    from fastapi.testclient import TestClient

    from songstep.server.settings import ServerSettings, key_hashes
    from songstep.ui.app import create_ui_app

    pipe = FakePipe()
    app = create_ui_app(pipe, ServerSettings(data_dir=tmp_path, api_key_hashes=key_hashes(["secret-key-1"])),
                        api=True, auth_hashes=key_hashes(["secret-key-1"]))
    with TestClient(app) as client:
        yield app.state.ui, client, pipe


def _form(ui, **changes):
    data = {comp: getattr(comp, "value", None) for comp in ui.c.values()}
    for comp in (ui.mode, ui.task, ui.desc, ui.simple_instr, ui.simple_lang, ui.fmt, ui.think, ui.history):
        data[comp] = comp.value
    for name, value in changes.items():
        data[ui.c[name] if name in ui.c else getattr(ui, name)] = value
    data[ui.fmt] = "wav"
    return data


def test_generate_shows_queue_position_then_takes(ui_app) -> None:
    ui, _, pipe = ui_app
    with ui.jobs.lock:  # the worker is busy: a first job runs and blocks, ours waits behind it
        ui.jobs.submit({"task": "text2music", "caption": "first"}, {"audio_format": "wav"}, ui.jobs.new_id())
        deadline = time.monotonic() + 20
        while ui.jobs.service.store.counts()["running"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        steps = ui.generate(_form(ui, caption="second", batch=2, seed=5))
        seen = [next(steps)[ui.status], next(steps)[ui.status]]
    assert seen == ["Submitting…", "Queued: position 1 in the queue"]
    final = list(steps)[-1]
    assert final[ui.status].startswith("Done: 2 take(s)")
    assert [r.caption for r in pipe.requests] == ["first", "second"] and pipe.requests[1].seed == 5
    files = final[ui.take_files]
    assert len(files) == 2 and all(Path(f).is_file() for f in files)
    assert final[ui.takes[0].title] == "**Take 1 · seed 5**" and final[ui.takes[1].title] == "**Take 2 · seed 6**"
    assert final[ui.takes[1].meta]["seed"] == 6 and final[ui.takes[1].meta]["request"]["caption"] == "second"
    assert final[ui.takes[0].image].shape[0] == HEIGHT and final[ui.takes[2].group]["visible"] is False
    assert final[ui.history][0][1] == "text2music" and final[ui.history][0][3] == "5, 6"


def test_generate_errors_are_messages(ui_app, tmp_path) -> None:
    ui, _, pipe = ui_app
    out = list(ui.generate(_form(ui, duration="5")))[-1][ui.status]
    assert "Error:" in out and "duration must be between 10 and 600 seconds, got 5.0" in out
    out = list(ui.generate(_form(ui, task="repaint", repaint_start=6, repaint_end="2")))[-1][ui.status]
    assert "source_audio: task 'repaint' needs source audio" in out and "empty repaint window" in out
    bad = tmp_path / "notes.mp3"
    bad.write_text("not audio at all")
    out = list(ui.generate(_form(ui, task="cover", source_audio=str(bad))))[-1][ui.status]
    assert "source_audio: the upload is not a readable audio file" in out and str(tmp_path) not in out
    out = list(ui.generate(_form(ui, mode="simple", desc="a happy song")))[-1][ui.status]
    assert "Simple mode needs the planner LM" in out
    assert pipe.requests == []  # nothing bad reached the worker


def test_use_as_source_switches_to_a_source_task(ui_app) -> None:
    ui, _, _ = ui_app
    source, task, _, mode, note = ui._use_as_source(1)(["a.wav", "b.wav"], "text2music")
    assert (source, task, mode) == ("b.wav", "repaint", "custom") and note.startswith("Take 2 is now")
    assert ui._use_as_source(0)(["a.wav"], "extract")[1] == "extract"


def test_api_routes_and_key_login_on_the_same_port(ui_app) -> None:
    _, client, _ = ui_app
    assert client.get("/health").json()["data"]["status"] == "ok"
    assert client.get("/v2/jobs").status_code == 401
    assert client.get("/v2/jobs", headers={"Authorization": "Bearer secret-key-1"}).status_code == 200
    assert client.get("/config").status_code == 401  # the UI itself needs the login
    login = client.post("/login", data={"username": "me", "password": "secret-key-1"})
    assert login.status_code == 200 and client.get("/config").status_code == 200
    assert client.post("/login", data={"username": "me", "password": "wrong-key-1"}).status_code == 400


def test_cli_refuses_a_public_host_without_keys(capsys) -> None:
    from songstep.cli import main

    assert main(["ui", "--model", "/nonexistent", "--host", "0.0.0.0"]) == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in capsys.readouterr().err
    assert main(["ui", "--model", "/nonexistent", "--share", "--api"]) == 2



def test_lang_builds_the_page_in_that_language(tmp_path) -> None:
    from songstep.server.settings import ServerSettings
    from songstep.ui.app import SongstepUI
    from songstep.ui.jobs import Jobs

    host = SimpleNamespace(state=SimpleNamespace(settings=ServerSettings(data_dir=tmp_path)))
    ui = SongstepUI(Jobs(host, FakePipe()), "ja")
    ui.build()
    assert ui.go.value == "生成" and ui.c["caption"].label == t("caption", "ja")
    assert dict((v, k) for k, v in ui.task.choices)["repaint"] == "部分修正"
    assert ui.c["duration"].visible and not ui.c["source_audio"].visible  # the new-song form first
