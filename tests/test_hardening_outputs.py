"""No lost takes: exclusive unique names, audio + sidecar as one unit, SIGTERM/SIGINT at any
point of a run, stale temporary files, names that would leave the output folder."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from songstep.audio import read_tags
from songstep.cli import main
from songstep.errors import InvalidRequest
from songstep.outputs import TakeWriter, check_name, clean_stale

ROOT = Path(__file__).resolve().parent.parent


class ForkServer:
    """`tests/cli_forkserver.py`: real `songstep` CLI runs in forked children."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "cli_forkserver.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)

    def _ask(self, msg: dict) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "fork server died"
        return json.loads(line)

    def start(self, argv: list[str], log: Path) -> int:
        return self._ask({"argv": argv, "stdout": str(log) + ".out", "stderr": str(log) + ".err"})["pid"]

    def wait(self, pid: int) -> int:
        return self._ask({"wait": pid})["rc"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def forkserver():
    server = ForkServer()
    yield server
    server.close()


def _argv(tree: Path, out: Path, *extra: str) -> list[str]:
    return ["generate", "--model", str(tree), "--caption", "lofi", "--duration", "10", "--steps", "1", "--lm", "none",
            "--quiet", "--device", "cpu", "--output-dir", str(out), *extra]


def _stdout(log: Path) -> str:
    path = Path(str(log) + ".out")
    return path.read_text() if path.exists() else ""  # the child may not have opened it yet


def _printed(log: Path) -> list[Path]:
    return [Path(line) for line in _stdout(log).splitlines() if line.strip()]


def _check_folder(out: Path, printed: list[Path]) -> int:
    """Every file on disk is a whole, printed take (audio beside its own sidecar); nothing
    printed is missing; no temporary or claim file remains. Returns the number of takes."""
    files = sorted(p for p in out.iterdir()) if out.exists() else []
    hidden = [p.name for p in files if p.name.startswith(".")]
    assert not hidden, f"temporary files left: {hidden}"
    assert sorted(printed) == files, (printed, files)
    audio = [p for p in files if p.suffix == ".wav"]
    assert {p.with_suffix(".json") for p in audio} == {p for p in files if p.suffix == ".json"}
    for path in audio:
        sidecar = json.loads(path.with_suffix(".json").read_text())
        assert read_tags(path)["seed"] == sidecar["params"]["seed"]  # its own sidecar
    return len(audio)


@pytest.mark.slow
def test_sigterm_and_sigint_at_random_points_lose_nothing(tiny_tree, tmp_path, forkserver) -> None:
    start = time.monotonic()
    pid = forkserver.start(_argv(tiny_tree, tmp_path / "full", "--batch", "4", "--name", "song"), tmp_path / "full")
    assert forkserver.wait(pid) == 0
    full = time.monotonic() - start
    assert _check_folder(tmp_path / "full", _printed(tmp_path / "full")) == 4
    rng = random.Random(14)
    outcomes = {}
    for trial in range(20):
        out, log = tmp_path / f"t{trial}", tmp_path / f"t{trial}"
        sig = rng.choice((signal.SIGTERM, signal.SIGINT))
        pid = forkserver.start(_argv(tiny_tree, out, "--batch", "4", "--name", "song", "--seed", str(trial)), log)
        if trial % 2:  # while takes are being written: after the first printed path
            deadline = time.monotonic() + 4 * full
            while not _stdout(log) and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.3))
        else:  # anywhere in the run
            time.sleep(rng.uniform(0.0, full))
        try:
            os.kill(pid, sig)
        except ProcessLookupError:  # pragma: no cover - finished already (zombie until waited)
            pass
        rc = forkserver.wait(pid)
        assert rc in (0, 128 + sig), (rc, Path(str(log) + ".err").read_text())
        takes = _check_folder(out, _printed(log))
        assert rc != 0 or takes == 4
        outcomes[trial] = (signal.Signals(sig).name, rc, takes)
    assert any(rc != 0 for _, rc, _ in outcomes.values()), outcomes  # the signals did land
    print(outcomes)


@pytest.mark.slow
def test_four_runs_with_the_same_name_keep_four_takes(tiny_tree, tmp_path, forkserver) -> None:
    out = tmp_path / "out"
    pids = [forkserver.start(_argv(tiny_tree, out, "--name", "song", "--seed", str(i)), tmp_path / f"r{i}") for i in range(4)]
    assert [forkserver.wait(pid) for pid in pids] == [0, 0, 0, 0]
    printed = [p for i in range(4) for p in _printed(tmp_path / f"r{i}")]
    assert _check_folder(out, printed) == 4
    names = sorted(p.name for p in printed if p.suffix == ".wav")
    assert names == ["song-2.wav", "song-3.wav", "song-4.wav", "song.wav"]
    seeds = sorted(json.loads(p.read_text())["params"]["seed"] for p in printed if p.suffix == ".json")
    assert seeds == [0, 1, 2, 3]


def test_a_taken_name_gets_a_suffix_and_overwrite_replaces(tmp_path, capsys) -> None:
    wave = torch.zeros(2, 4800)
    first = TakeWriter(tmp_path, "wav").write("song", wave, 48000, {"seed": 1})
    second = TakeWriter(tmp_path, "wav").write("song", wave, 48000, {"seed": 2})
    assert [p.name for p in first + second] == ["song.wav", "song.json", "song-2.wav", "song-2.json"]
    (tmp_path / "x.json").write_text("{}")  # a stray sidecar also takes the name
    assert TakeWriter(tmp_path, "wav").write("x", wave, 48000, {"seed": 3})[0].name == "x-2.wav"
    again = TakeWriter(tmp_path, "wav", overwrite=True).write("song", wave, 48000, {"seed": 4})
    assert again == first and json.loads(first[1].read_text())["params"]["seed"] == 4
    assert read_tags(first[0])["seed"] == 4


def test_stale_parts_of_dead_writers_are_cleaned_live_ones_kept(tmp_path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = [tmp_path / f".song.wav.{dead_pid}-00ff00ff.part", tmp_path / ".song.claim"]
    stale[1].write_text(str(dead_pid))
    live = tmp_path / f".other.wav.{os.getppid()}-0a0b0c0d.part"
    fresh = tmp_path / f".new.wav.{dead_pid}-01020304.part"  # pid gone, but touched just now
    for path in (stale[0], live, fresh):
        path.write_bytes(b"x")
    old = time.time() - 120
    for path in (*stale, live):
        os.utime(path, (old, old))
    assert sorted(clean_stale(tmp_path)) == sorted(stale)
    assert live.exists() and fresh.exists() and not any(p.exists() for p in stale)


@pytest.mark.parametrize("name", ["../x", "/tmp/abs", "a/b", ".hidden", "..", ""])
def test_names_cannot_leave_the_output_folder(tiny_tree, tmp_path, capsys, name) -> None:
    with pytest.raises(InvalidRequest):
        check_name(name)
    code = main(_argv(tiny_tree, tmp_path / "out", "--name", name))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --name") and err.count("\n") == 1
    assert not (tmp_path / "x").exists() and not (tmp_path / "out").exists()


def test_sigterm_exits_143_cleanly_through_the_real_cli(tiny_tree, tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "songstep.cli", *_argv(tiny_tree, tmp_path / "out", "--batch", "2")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(3.0)  # inside imports or model loading or the run: all must end cleanly
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, 143, -signal.SIGTERM), err
    if proc.returncode == 143:
        assert err.strip().splitlines()[-1] == "interrupted"
    printed = [Path(line) for line in out.splitlines() if line.strip()]
    _check_folder(tmp_path / "out", printed)
