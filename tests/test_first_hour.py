"""The first hour of a new user, through the real CLI: status lines and moving bars, a quiet library,
a hub that fails fast, a user's own checkpoints folder, the plan's duration, honest files."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from songstep.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]
BASE = ["--device", "cpu", "--steps", "2", "--seed", "1"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("HF_")}
    return {**env, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_DISABLE_TELEMETRY": "1", **extra}


def _wave(path: Path, seconds: float) -> Path:
    t = np.arange(int(48000 * seconds)) / 48000
    sf.write(path, np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.3 * np.sin(2 * np.pi * 330 * t)], 1), 48000)
    return path


# -- status lines ---------------------------------------------------------------------------------
def test_one_status_line_per_stage_and_quiet_turns_them_off(tiny_tree, tmp_path, capsys) -> None:
    args = ["generate", "--model", str(tiny_tree), *BASE, "--caption", "lofi", "--duration", "10",
            "--output-dir", str(tmp_path)]
    assert main(args) == 0
    err = capsys.readouterr().err
    stages = ["songstep generate: checking the request", "device cpu, float32, cpu tier",
              "loading turbo DiT (", "loading VAE (", "loading text encoder (", "running text2music (1 take)"]
    where = [err.find(s) for s in stages]
    assert -1 not in where and where == sorted(where), err
    # each component line names its size: the tiny DiT's weights are a few MB
    assert re.search(r"loading turbo DiT \(\d+\.\d MB\) from .*acestep-v15-turbo", err)
    assert re.search(r"decoding: +100%.* (\d+)/\1", err)  # the decode bar ends at its total
    assert main([*args, "--quiet"]) == 0
    quiet = capsys.readouterr()
    assert quiet.err == "" and len(quiet.out.split()) == 2  # only the audio and sidecar paths


def test_library_prints_nothing_and_logs_its_stages(tiny_tree, capfd, caplog, monkeypatch) -> None:
    from songstep.pipeline import Pipeline

    status = logging.getLogger("songstep.status")  # as a library user finds it (no CLI handler)
    monkeypatch.setattr(status, "handlers", [])
    monkeypatch.setattr(status, "propagate", True)
    monkeypatch.setattr(status, "level", logging.NOTSET)
    with caplog.at_level(logging.INFO, logger="songstep"):
        pipe = Pipeline.from_pretrained(tiny_tree, device="cpu", lm="none")
        pipe.generate("lofi", duration=10, seed=1, steps=1)
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # no prints, no torch/transformers/diffusers bars or warnings
    lines = [r.getMessage() for r in caplog.records if r.name == "songstep.status"]
    assert lines[0].startswith("device cpu") and any(m.startswith("loading VAE") for m in lines)


def _read_pty(argv: list[str], cwd: Path) -> tuple[list[tuple[float, str]], int]:
    """Run `argv` on a pseudo-terminal (as a user's terminal); returns (seconds since start, text)
    chunks and the exit code. Bounded: killed after 10 minutes."""
    import fcntl
    import pty
    import select
    import struct
    import termios
    import time

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=_env(), cwd=cwd, close_fds=True)
    os.close(slave)
    chunks: list[tuple[float, str]] = []
    try:
        while time.monotonic() - start < 600:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append((time.monotonic() - start, data.decode("utf-8", "replace")))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return chunks, proc.wait()


def test_pty_first_status_line_before_anything_and_the_encode_bar_moves(tiny_tree, tmp_path) -> None:
    source = _wave(tmp_path / "src.wav", 1.5)
    chunks, code = _read_pty([sys.executable, "-m", "songstep", "cover", "--model", str(tiny_tree), *BASE,
                              "--source", str(source), "--threads", "1", "--output-dir", str(tmp_path / "out")],
                             tmp_path)
    text = "".join(c for _, c in chunks)
    assert code == 0, text
    first_time, first = chunks[0]
    # The very first output is the status line, printed before torch is even imported; it comes in
    # its own read, long before the process ends (measured: ~0.1 s of a ~30 s run on a busy machine).
    assert first.startswith("songstep cover: checking the request"), first
    assert "loading" not in first and first_time < chunks[-1][0]
    assert text.index("checking the request") < text.index("device cpu") < text.index("loading turbo DiT")
    for label in ("encoding source", "decoding"):
        seen = {int(n) for n in re.findall(rf"{label}: +\d+%\|[^|]*\| *(\d+)/\d+", text)}
        assert len(seen) >= 3, (label, seen)  # the bar moved through several values while working
    assert len(list((tmp_path / "out").glob("*.wav"))) == 1


# -- the hub --------------------------------------------------------------------------------------
def test_unresolvable_hub_fails_at_once_with_one_line(tmp_path) -> None:
    env = _env(HF_ENDPOINT="http://nonexistent.invalid")
    argv = [sys.executable, "-m", "songstep", "generate", "--caption", "lofi", "--duration", "10", "--device", "cpu",
            "--root", str(tmp_path / "checkpoints"), "--quiet"]
    run = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 1 and len(lines) == 1, run.stderr
    assert lines[0].startswith("error: cannot resolve nonexistent.invalid")
    assert "--offline" in lines[0] and "HF_ENDPOINT" in lines[0] and "check the network" in lines[0]
    assert "Retry" not in run.stderr and "WARNING" not in run.stderr
    assert not list((tmp_path / "checkpoints").rglob("*.safetensors"))


def test_each_hub_warning_once(tmp_path) -> None:
    code = ("from songstep.cli import main; main(['download', '--list']); "
            "from huggingface_hub.utils import logging as l; l.get_logger('huggingface_hub.utils._http')"
            ".warning('Retrying in 1s [Retry 1/5].')")
    run = subprocess.run([sys.executable, "-c", code], env=_env(), cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0 and run.stderr.count("Retrying in 1s") == 1, run.stderr


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """The local fake hub of tests/loading/test_hub.py, as the default endpoint."""
    import threading
    from http.server import ThreadingHTTPServer

    from huggingface_hub import constants as hf_constants

    from songstep.loading import hub
    from tests.loading.test_hub import FakeHub, Handler

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    fake = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("FakeHubHandler", (Handler,), {"fake": fake}))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    real = hub.HfHubClient
    monkeypatch.setattr(hub, "HfHubClient", lambda: real(endpoint=fake.url, token=False, cache_dir=tmp_path / "hf"))
    yield fake
    server.shutdown()
    server.server_close()


def test_download_says_what_and_how_big_before_it_starts(fake_hub, tmp_path, capsys) -> None:
    from songstep.loading import hub

    files = {"vae/config.json": b'{"a": 1}', "vae/diffusion_pytorch_model.safetensors": b"x" * 150_000}
    fake_hub.push(hub.MAIN_REPO, files, commit=hub.MAIN_REVISION)
    root = tmp_path / "checkpoints"
    assert main(["download", "vae", "--root", str(root)]) == 0
    err, out = capsys.readouterr()[::-1]
    assert "will download vae: 2 files, 0.2 MB (ACE-Step/Ace-Step1.5@19671f406d)" in err
    assert err.index("will download vae") < err.index("downloading vae: 2 files")
    assert out.strip() == f"vae: {root / 'vae'}"
    assert (root / "vae" / "diffusion_pytorch_model.safetensors").stat().st_size == 150_000
    assert "%|" not in err  # no huggingface_hub bars
    assert main(["download", "vae", "--root", str(root)]) == 0  # complete: nothing planned
    assert "will download" not in capsys.readouterr().err


def test_download_list_shows_revisions(tmp_path, capsys) -> None:
    assert main(["download", "--list", "--root", str(tmp_path)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "ACE-Step/Ace-Step1.5/acestep-v15-turbo@19671f406d" in rows["turbo"]
    assert "ACE-Step/acestep-v15-base@main (locked on first download)" in rows["base"]
    assert "32 steps" in rows["base"] and "~50" not in "".join(rows.values())


# -- a user's own checkpoints folder --------------------------------------------------------------
def test_local_tree_at_another_revision_loads_as_it_is(tiny_tree, tmp_path, capsys, monkeypatch) -> None:
    from songstep.loading import hub

    root = tmp_path / "checkpoints"
    shutil.copytree(tiny_tree, root)
    config = root / "acestep-v15-turbo" / "config.json"
    data = json.loads(config.read_text())
    data.update(_name_or_path="upstream", architectures=["AceStepConditionGenerationModel"], note="x" * 500)
    config.write_text(json.dumps(data, indent=2))  # another size than the pinned 1968 bytes
    meta = root / ".cache" / "huggingface" / "download" / "acestep-v15-turbo" / "config.json.metadata"
    meta.parent.mkdir(parents=True)
    meta.write_text("ab" * 20 + "\netag\n1.0\n")
    argv = ["generate", "--root", str(root), *BASE, "--caption", "lofi", "--duration", "10",
            "--output-dir", str(tmp_path / "out")]
    assert main(argv) == 0  # the default hub id, but the folder under --root is the user's: used as it is
    err = capsys.readouterr().err
    told = [line for line in err.splitlines() if "acestep-v15-turbo as it is" in line]
    assert len(told) == 1 and "revision abababab" in told[0] and "not checked against the pinned" in told[0]
    assert len(list((tmp_path / "out").glob("*.wav"))) == 1
    (root / "Qwen3-Embedding-0.6B" / "model.safetensors").unlink()
    assert main(["info", "--root", str(root)]) == 0
    found = json.loads(capsys.readouterr().out)["checkpoints"]
    assert found["components"]["turbo"] == {"folder": str(root / "acestep-v15-turbo"), "state": "local (used as is)",
                                            "revision": "ab" * 20}
    assert found["components"]["text-encoder"]["state"] == "incomplete: missing model.safetensors"
    assert "sft" in found["absent"]
    real = hub.HfHubClient  # no network in tests: a hub whose name never resolves
    monkeypatch.setattr(hub, "HfHubClient", lambda: real(endpoint="http://nonexistent.invalid", token=False))
    assert main([*argv, "--quiet"]) == 1  # the incomplete folder is not "installed": one line naming the file
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "Qwen3-Embedding-0.6B is incomplete (missing model.safetensors)" in err[0]


# -- the plan -------------------------------------------------------------------------------------
def test_plan_prints_the_duration_its_codes_imply(tiny_tree, capsys) -> None:
    argv = ["plan", "--model", str(tiny_tree), "--lm", "1.7B", "--device", "cpu", "--caption", "lofi",
            "--seed", "3", "--quiet"]
    assert main([*argv[:-1]]) == 0  # not quiet: the LM's loading line names its size
    assert re.search(r"loading planner LM acestep-5Hz-lm-1.7B \(\d+\.\d MB\)", capsys.readouterr().err)
    assert main(argv) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["code_count"] > 0
    assert plan["duration"] == plan["codes_duration"] == plan["code_count"] / 5


# -- files ----------------------------------------------------------------------------------------
def _generate(tiny_tree, out: Path, capsys, *extra: str) -> Path:
    assert main(["generate", "--model", str(tiny_tree), *BASE, "--caption", "lofi", "--duration", "10",
                 "--bpm", "120", "--key", "F# min", "--quiet", "--output-dir", str(out), *extra]) == 0
    return Path(capsys.readouterr().out.split()[0])


def test_mp3_has_tbpm_tkey_and_the_bitrate_asked(tiny_tree, tmp_path, capsys) -> None:
    from mutagen.mp3 import MP3

    audio = MP3(_generate(tiny_tree, tmp_path, capsys, "--format", "mp3", "--mp3-bitrate", "320k"))
    assert audio.tags["TBPM"].text == ["120"] and audio.tags["TKEY"].text == ["F#m"]
    assert audio.info.bitrate == 320_000


def test_flac_24_bit_has_vorbis_bpm_and_key(tiny_tree, tmp_path, capsys) -> None:
    from mutagen.flac import FLAC

    audio = FLAC(_generate(tiny_tree, tmp_path, capsys, "--format", "flac", "--bit-depth", "24"))
    assert audio.info.bits_per_sample == 24 and audio["BPM"] == ["120"] and audio["KEY"] == ["F#m"]


def test_wav_32_bit_float_with_id3_tags(tiny_tree, tmp_path, capsys) -> None:
    from mutagen.wave import WAVE

    path = _generate(tiny_tree, tmp_path, capsys, "--bit-depth", "32")
    assert sf.info(path).subtype == "FLOAT"
    tags = WAVE(path).tags
    assert tags["TBPM"].text == ["120"] and tags["TKEY"].text == ["F#m"]


@pytest.mark.parametrize("argv,message", [
    (["--format", "flac", "--bit-depth", "32"], "--bit-depth 32 does not apply to --format flac"),
    (["--format", "mp3", "--bit-depth", "24"], "--bit-depth 24 does not apply to --format mp3"),
])
def test_bad_output_options_exit_2_before_loading(tmp_path, capsys, argv, message) -> None:
    code = main(["generate", "--model", str(tmp_path / "missing"), "--device", "cpu", "--duration", "10",
                 "--quiet", "--output-dir", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and not (tmp_path / "out").exists()


def test_mp3_bitrate_without_mp3_is_a_warning(tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        code = main(["generate", "--model", str(tmp_path / "missing"), "--device", "cpu", "--duration", "10",
                     "--quiet", "--mp3-bitrate", "320", "--output-dir", str(tmp_path / "out")])
    assert code == 1  # the model is missing; the warning came before it was looked for
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "--mp3-bitrate 320k is ignored: --format is wav"]


def test_bad_mp3_bitrate_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["generate", "--duration", "10", "--format", "mp3", "--mp3-bitrate", "100k"])
    assert stop.value.code == 2 and "choose one of 128k, 192k, 256k, 320k" in capsys.readouterr().err


def test_24_bit_round_trip_and_ogg_tags(tmp_path) -> None:
    from mutagen.oggvorbis import OggVorbis

    from songstep import audio

    wave = np.random.default_rng(0).uniform(-1, 1, (2, 4800)).astype(np.float32)
    wave[0, :2] = (1.0, -1.0)
    path = audio.save_audio(tmp_path / "a.wav", wave, bit_depth=24, params={"bpm": 90, "keyscale": "Bb major"})
    back, _ = sf.read(path, dtype="float64")
    assert sf.info(path).subtype == "PCM_24"
    err = np.abs(back.T - wave)
    err[0, 0] = 0.0  # +1.0 is clipped (checked below); every other sample is rounded to the nearest code
    assert err.max() <= 0.5 / 2**23
    assert back[0, 0] == (2**23 - 1) / 2**23 and back[1, 0] == -1.0  # +1.0 clipped to the largest code
    ogg = OggVorbis(audio.save_audio(tmp_path / "a.ogg", wave, params={"bpm": 90.4, "keyscale": "A minor"}))
    assert ogg["BPM"] == ["90"] and ogg["KEY"] == ["Am"]
    assert [audio.daw_key(k) for k in ("C major", "f# minor", "Eb major", "H", None)] == ["C", "F#m", "Eb", None, None]


def test_vae_reports_each_block_of_each_tile_and_the_result_is_unchanged(tiny_tree) -> None:
    import torch

    from songstep.models.vae import VAE

    vae = VAE.from_pretrained(tiny_tree / "vae")
    wave = torch.randn(1, 2, 48000 // 2, generator=torch.Generator().manual_seed(0)) * 0.1
    seen: list[tuple[int, int]] = []
    tiled = dict(chunk_seconds=0.2, overlap_seconds=0.04)
    latents = vae.encode(wave, sample=False, progress=lambda d, t: seen.append((d, t)), **tiled)
    blocks = len(vae.model.encoder.block)
    total = seen[0][1]
    assert total % blocks == 0 and total // blocks >= 3  # several tiles
    assert [d for d, _ in seen] == list(range(total + 1))  # 0, then one step per block of each tile
    assert torch.equal(latents, vae.encode(wave, sample=False, **tiled))
    steps: list[int] = []
    vae.decode(latents, chunk_frames=4, overlap_frames=1, progress=lambda d, t: steps.append(d))
    assert steps == sorted(steps) and steps[-1] > len(vae.model.decoder.block)


# -- docs -----------------------------------------------------------------------------------------
OTHER_TOOLS = {"--index-url", "--local-dir", "--include", "--revision", "--help"}  # pip's and hf's flags


def test_user_guide_names_only_flags_that_exist() -> None:
    from songstep.cli import build_parser

    parser = build_parser()
    known = set(parser._option_string_actions)
    for action in parser._subparsers._group_actions[0].choices.values():
        known |= set(action._option_string_actions)
    guide = (REPO_ROOT / "docs" / "USER_GUIDE.md").read_text(encoding="utf-8")
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", guide))
    assert named and not (named - known - OTHER_TOOLS), named - known - OTHER_TOOLS
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/USER_GUIDE.md" in readme
    for text in (readme, guide, (REPO_ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")):
        assert "~50" not in text  # base and sft default to 32 steps


# -- what the integrator built for this issue, checked as a new user meets it ---------------------
def test_version_threads_and_info_model(tiny_tree, capsys) -> None:
    import torch

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and re.fullmatch(r"songstep \d+\.\d+\.\d+\n", capsys.readouterr().out)
    before = torch.get_num_threads()
    try:  # --threads applies before anything else runs, even when the request is then refused
        assert main(["generate", "--threads", "2", "--duration", "5", "--quiet"]) == 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    capsys.readouterr()
    assert main(["info", "--model", str(tiny_tree), "--device", "cpu"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["device"] == "cpu" and info["model"]["kind"] == "local folder (used as it is)"
    families = {k: v.get("family") for k, v in info["model"]["components"].items()}
    assert families["turbo"] == "turbo" and families["base"] == "base"


def test_diffusers_habits_and_per_take_params(tiny_tree) -> None:
    import torch

    from songstep.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(tiny_tree, device="cpu", torch_dtype=torch.float32, lm="none")
    assert pipe.to("cpu") is pipe and pipe.device == torch.device("cpu") and pipe.dtype == torch.float32
    result = pipe.generate("lofi", duration=10, seed=11, batch=2, num_inference_steps=1, output_type="np")
    assert isinstance(result.audio, np.ndarray) and result.audio.shape[0] == 2
    takes = [result.take(i) for i in range(2)]
    assert [t.seed for t in takes] == [11, 12] == [t.params["seed"] for t in takes]
    assert takes[1].params["batch_index"] == 1 and result.params["steps"] == 1


def test_planner_code_cap_never_past_600_seconds(tiny_lm_dir) -> None:
    from songstep.planner import Planner, PlanOptions

    planner = Planner.from_pretrained(tiny_lm_dir, device="cpu")
    for opts in (PlanOptions(), PlanOptions(max_duration=700.0)):
        codes = planner.code_token_cap(None, opts) - 1  # the cap holds the codes plus the end token
        assert codes / 5 <= 600
    assert planner.code_token_cap(None, PlanOptions(max_duration=120.0)) - 1 == min(600, planner.max_model_len - 65)


def test_ignored_values_warned_and_stems_keep_their_level(tiny_tree, tmp_path, capsys, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        assert main(["generate", "--model", str(tiny_tree), *BASE, "--caption", "lofi", "--duration", "10", "--quiet",
                     "--guidance", "7", "--lyrics", "la la", "--instrumental", "--output-dir", str(tmp_path / "a")]) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("guidance 7 is ignored" in w for w in warned) and any("lyrics are ignored" in w for w in warned)
    sidecar = json.loads(Path(capsys.readouterr().out.split()[1]).read_text())["params"]
    assert sidecar["request"]["caption"] == "lofi" and sidecar["level"] == "-1 dBFS peak"
    source = _wave(tmp_path / "mix.wav", 1.0)
    assert main(["extract", "--model", str(tiny_tree), *BASE, "--source", str(source), "--track", "vocals", "--quiet",
                 "--output-dir", str(tmp_path / "b")]) == 0
    stem = json.loads(Path(capsys.readouterr().out.split()[1]).read_text())["params"]
    assert stem["task"] == "extract" and stem["level"] == "as decoded"  # a stem keeps the mix's level
