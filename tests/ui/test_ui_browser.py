"""The web UI in a real browser (Debian's chromium, headless, through Playwright) on the tiny pipeline:
Custom mode → a batch of 2 → two playable <audio> elements and two spectrogram images → "use as
source" → a repaint; bad inputs (duration 5 s, a repaint window that ends before it starts, a
non-audio upload) show readable messages in the page. A screenshot is kept as an artifact.

Needs `apt-get install chromium` (skipped when /usr/bin/chromium is missing) and the `[ui]` extra.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("gradio")
pytest.importorskip("playwright")
CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)

STEP_TIMEOUT_MS = 30_000  # any single page interaction
JOB_TIMEOUT_S = 240  # one generation on a loaded 2-core machine (measured ~10–20 s)


@pytest.fixture(scope="module")
def ui_url(tiny_tree, tmp_path_factory):
    """The UI (no REST routes) on the tiny pipeline, served by uvicorn in a thread on 127.0.0.1."""
    import uvicorn

    from songstep.pipeline import Pipeline
    from songstep.server.settings import ServerSettings
    from songstep.ui.app import create_ui_app

    pipe = Pipeline.from_pretrained(tiny_tree, device="cpu", lm="none")
    app = create_ui_app(pipe, ServerSettings(data_dir=tmp_path_factory.mktemp("ui-data")))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the UI server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def page(ui_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(STEP_TIMEOUT_MS)
        page.goto(ui_url)
        page.wait_for_selector("#generate")
        yield page
        browser.close()


def _status(page) -> str:
    return page.inner_text("#status [data-testid=markdown]")


def _generate(page, *wanted: str, timeout: float = JOB_TIMEOUT_S) -> str:
    """Click Generate, then poll the status box until it shows new text containing one of
    `wanted` (the click's first answer replaces the old text); fail with what it shows instead."""
    before = _status(page)
    page.click("#generate")
    return _status_until(page, *wanted, timeout=timeout, changed_from=before)


def _status_until(page, *wanted: str, timeout: float = JOB_TIMEOUT_S, changed_from: str | None = None) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = _status(page)
        if text != changed_from and any(w in text for w in wanted):
            return text
        changed_from = None if text != changed_from else changed_from
        page.wait_for_timeout(200)
    pytest.fail(f"status never showed {wanted}; it shows {text!r}")


def _fill(page, elem_id: str, value: str) -> None:
    page.fill(f"#{elem_id} textarea, #{elem_id} input", value)


def _set_slider(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(value)
    box.press("Enter")


def _audio_durations(page) -> list[float]:
    """Durations of the take players whose audio the browser has loaded (duration > 0)."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('.take-audio audio'))
        .filter(a => a.offsetParent !== null && a.src && a.readyState >= 1 && a.duration > 0)
        .map(a => a.duration)""")


def _wait_audio(page, count: int) -> list[float]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = _audio_durations(page)
        if len(found) >= count:
            return found
        page.wait_for_timeout(250)
    pytest.fail(f"expected {count} playable audio elements, found {_audio_durations(page)}")


def _screenshot(page, tmp_path_factory, name: str) -> Path:
    path = tmp_path_factory.mktemp("ui-artifacts") / name
    page.screenshot(path=str(path), full_page=True)
    target = os.environ.get("SONGSTEP_ARTIFACTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / name)
    return path


def test_custom_batch_then_repaint_from_a_take(page, tmp_path_factory):
    page.fill("#caption textarea", "lofi hip hop, warm piano, vinyl crackle")
    page.fill("#lyrics textarea", "[Verse]\nsoft rain on the window\n[Chorus]\nstay a little longer")
    _fill(page, "duration", "5")
    page.click("#advanced >> text=Advanced settings")
    _fill(page, "steps", "2")
    _fill(page, "seed", "11")
    _set_slider(page, "batch", "2")
    # a duration below the minimum is refused with the request type's own message
    assert "duration must be between 10 and 600 seconds" in _generate(page, "Error")

    _fill(page, "duration", "10")
    done = _generate(page, "Done", "Error")
    assert "Done: 2 take(s)" in done, done
    durations = _wait_audio(page, 2)
    assert len(durations) == 2 and all(abs(d - 10.0) < 0.1 for d in durations), durations
    images = page.evaluate("""() => Array.from(document.querySelectorAll('.take-spectrogram img'))
        .filter(i => i.offsetParent !== null && i.complete && i.naturalWidth > 0).length""")
    assert images == 2
    titles = " ".join(page.locator(".take-title").all_inner_texts())
    assert "Take 1 · seed 11" in titles and "Take 2 · seed 12" in titles, titles

    page.locator(".use-as-source").first.click()
    _status_until(page, "Take 1 is now the source of a Repaint")
    assert page.locator("#task input[value=repaint]").is_checked()
    _fill(page, "repaint-start", "6")
    _fill(page, "repaint-end", "2")
    assert "empty repaint window" in _generate(page, "Error", "Done")

    _fill(page, "repaint-start", "2")
    _fill(page, "repaint-end", "6")
    _set_slider(page, "batch", "1")
    done = _generate(page, "Done", "Error")
    assert "Done: 1 take(s)" in done, done
    assert len(_wait_audio(page, 1)) == 1
    history = page.inner_text("#history")
    assert "repaint" in history and "text2music" in history
    shot = _screenshot(page, tmp_path_factory, "ui_after_repaint.png")
    assert shot.stat().st_size > 10_000


def test_non_audio_upload_is_a_message(page, tmp_path_factory):
    bad = tmp_path_factory.mktemp("upload") / "notes.wav"
    bad.write_text("this is not audio\n" * 20)
    page.locator("#reference-audio input[type=file]").set_input_files(str(bad))
    page.wait_for_timeout(500)
    text = _generate(page, "Error", "Done")
    assert "not a readable audio file" in text, text
    _screenshot(page, tmp_path_factory, "ui_bad_upload.png")
