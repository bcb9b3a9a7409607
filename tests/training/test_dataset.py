"""Dataset builder: labels from files, fp32 shards, resumable, bad inputs reported and skipped."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from songstep.audio import load_audio
from songstep.errors import InvalidRequest
from songstep.training import dataset as ds
from tests.training.conftest import CLIP_SECONDS, MIN_SECONDS, write_tone


def test_manifest_labels_and_fp32_shards(dataset_dir, fp32_pipe, song_dir) -> None:
    _, items = ds.read_manifest(dataset_dir)
    by_audio = {i.audio: i for i in items}
    assert sorted(by_audio) == [f"song{i}.wav" for i in range(4)]
    assert all(i.status == "done" for i in items)
    assert by_audio["song0.wav"].lyrics == "[verse]\nla la la 0"
    assert by_audio["song1.wav"].caption == "bright synth pop" and by_audio["song1.wav"].bpm == 120
    assert by_audio["song2.wav"].caption == "dark ambient drone" and by_audio["song2.wav"].keyscale == "A minor"
    assert by_audio["song3.wav"].seconds == pytest.approx(CLIP_SECONDS)
    item = by_audio["song1.wav"]
    tensors = load_file(str(ds.shard_path(dataset_dir, item)))
    frames = int(CLIP_SECONDS * 48000) // 1920
    assert tensors["target_latents"].shape == (frames, 64) and tensors["target_latents"].dtype == torch.float32
    assert tensors["text_attention_mask"].dtype == torch.bool
    # the shard holds exactly what the fp32 components give for this song's prompts
    caption_prompt, lyric_prompt = item.prompts()
    assert "bright synth pop" in caption_prompt and "bpm: 120" in caption_prompt
    text, mask = fp32_pipe.components.text.encode_captions([caption_prompt])
    assert torch.equal(tensors["text_hidden_states"], text[0].float()) and torch.equal(tensors["text_attention_mask"], mask[0])
    lat = fp32_pipe.components.vae.encode(load_audio(song_dir / "song1.wav")[None], sample=False)[0]
    assert torch.equal(tensors["target_latents"], lat)
    with safe_open(str(ds.shard_path(dataset_dir, item)), "pt") as f:
        assert f.metadata()["fingerprint"] == item.fingerprint()


def test_rerun_is_resumed_and_edits_are_reprocessed(fp32_pipe, song_dir, dataset_dir, tmp_path) -> None:
    import shutil

    out = tmp_path / "ds"
    shutil.copytree(dataset_dir, out)
    report = ds.build(fp32_pipe, song_dir, out)
    assert report.reused == 4 and report.done == 0
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["items"][0]["caption"] = "edited by hand"
    (out / "manifest.json").write_text(json.dumps(manifest))
    report = ds.build(fp32_pipe, song_dir, out)
    assert report.reused == 3 and report.done == 1
    _, items = ds.read_manifest(out)
    assert items[0].caption == "edited by hand"


def test_empty_folder_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(InvalidRequest, match="no audio files"):
        ds.scan(tmp_path)
    (tmp_path / "orphan.txt").write_text("la la")
    with pytest.raises(InvalidRequest, match="no audio files.*orphan.txt"):
        ds.scan(tmp_path)
    with pytest.raises(InvalidRequest, match="not a folder"):
        ds.scan(tmp_path / "missing")


def test_bad_files_are_reported_and_skipped(tmp_path) -> None:
    write_tone(tmp_path / "good.wav", CLIP_SECONDS, 330.0)
    write_tone(tmp_path / "short.wav", 0.2, 330.0)
    (tmp_path / "broken.wav").write_bytes(b"RIFF1234WAVEnot really audio")
    (tmp_path / "lonely.txt").write_text("lyrics without a song")
    (tmp_path / "lonely2.json").write_text("{}")
    items, report = ds.scan(tmp_path, min_seconds=MIN_SECONDS)
    assert [i.audio for i in items] == ["good.wav"]
    reasons = {s["file"]: s["reason"] for s in report.skipped}
    assert set(reasons) == {"short.wav", "broken.wav", "lonely.txt", "lonely2.json"}
    assert "shorter than the minimum" in reasons["short.wav"]
    assert "unreadable audio" in reasons["broken.wav"]
    assert "lyrics without audio" in reasons["lonely.txt"] and "metadata without audio" in reasons["lonely2.json"]


def test_a_file_failing_mid_run_is_skipped_and_the_rest_built(fp32_pipe, tmp_path) -> None:
    songs = tmp_path / "songs"
    songs.mkdir()
    write_tone(songs / "a.wav", CLIP_SECONDS, 330.0)
    nan = np.full((int(48000 * CLIP_SECONDS), 2), np.nan, dtype=np.float32)
    sf.write(songs / "b.wav", nan, 48000, subtype="FLOAT")  # readable header, unusable samples
    report = ds.build(fp32_pipe, songs, tmp_path / "out", min_seconds=MIN_SECONDS)
    assert report.done == 1 and [s["file"] for s in report.skipped] == ["b.wav"]
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["skipped"][0]["file"] == "b.wav"
    _, items = ds.read_manifest(tmp_path / "out")
    assert {i.audio: i.status for i in items} == {"a.wav": "done", "b.wav": "skipped"}
    assert len(ds.load_dataset(tmp_path / "out")) == 1


def test_nothing_usable_is_an_error_after_the_report(fp32_pipe, tmp_path) -> None:
    songs = tmp_path / "songs"
    songs.mkdir()
    write_tone(songs / "short.wav", 0.2, 330.0)
    with pytest.raises(InvalidRequest, match="no usable songs"):
        ds.build(fp32_pipe, songs, tmp_path / "out", min_seconds=MIN_SECONDS)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["skipped"][0]["file"] == "short.wav"


def test_manifest_only_then_build(fp32_pipe, song_dir, tmp_path) -> None:
    report = ds.build(fp32_pipe, song_dir, tmp_path, manifest_only=True, min_seconds=MIN_SECONDS)
    assert report.done == 0 and not (tmp_path / "items").exists()
    _, items = ds.read_manifest(tmp_path)
    assert len(items) == 4 and all(i.status == "pending" for i in items)
    with pytest.raises(InvalidRequest, match="no preprocessed songs"):
        ds.load_dataset(tmp_path)


class _FakeUnderstand:
    """Stands in for a pipeline with a planner: returns a fixed description."""

    def __init__(self):
        from songstep.planner import SongDescription

        self.calls = []
        self.desc = SongDescription(caption="lm caption", lyrics="lm lyrics", bpm=99, keyscale="C major",
                                    timesignature="4", language="en")

    def understand(self, path, seed=None):
        self.calls.append(path.name)
        return self.desc


def test_auto_label_fills_only_missing_labels(song_dir) -> None:
    items, report = ds.scan(song_dir, min_seconds=MIN_SECONDS)
    fake = _FakeUnderstand()
    ds.auto_label(fake, items, song_dir, report)
    by_audio = {i.audio: i for i in items}
    assert sorted(fake.calls) == ["song0.wav", "song3.wav"]  # song1/song2 have captions already
    s0 = by_audio["song0.wav"]
    assert (s0.caption, s0.bpm, s0.keyscale, s0.language, s0.labelled_by) == ("lm caption", 99, "C major", "en", "lm")
    assert s0.lyrics == "[verse]\nla la la 0"  # its own lyrics file wins
    assert by_audio["song1.wav"].caption == "bright synth pop" and by_audio["song1.wav"].labelled_by == "files"


def test_auto_label_without_a_planner_is_a_clear_error(fp32_pipe, song_dir, tmp_path) -> None:
    with pytest.raises(InvalidRequest, match="needs a planner LM"):
        ds.build(fp32_pipe, song_dir, tmp_path, label=True)
    assert not (tmp_path / "manifest.json").exists()
