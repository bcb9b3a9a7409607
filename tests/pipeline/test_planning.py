"""The pipeline with the planner LM on the tiny checkpoint tree (CPU): planned generation,
audio → codes → understand, AutoScore of takes, AutoGen, LM selection."""

from __future__ import annotations

import threading

import pytest
import torch

from songstep.constants import HOP_LENGTH, SAMPLE_RATE
from songstep.errors import InvalidRequest, ModelNotFound
from songstep.pipeline import GenerationResult, Pipeline
from songstep.pipeline.components import resolve_lm
from songstep.planner import PlanOptions, Score, SongDescription
from songstep.prompts import audio_code_ids
from songstep.request import GenerationRequest

pytest.importorskip("llguidance")

SHORT = PlanOptions(max_duration=12)  # CoT durations 10–12 s: few codes, short audio


@pytest.fixture(scope="module")
def pipe(tiny_tree):
    p = Pipeline.from_pretrained(tiny_tree, variant="turbo", device="cpu", lm="1.7B")
    p.planner.caption_max_tokens = 12
    p.planner.max_new_tokens = 120
    return p


@pytest.fixture(scope="module")
def plain(pipe):
    return Pipeline(pipe.components, pipe.tier)  # the same components, no planner


def _clip(seconds: float, seed: int = 0) -> torch.Tensor:
    """A short stereo noise clip (the tiny VAE encodes ~1 s of audio per second on CPU)."""
    return 0.1 * torch.randn(2, int(seconds * SAMPLE_RATE), generator=torch.Generator().manual_seed(seed))


def _codes(result, i=0) -> int:
    return len(audio_code_ids(result.params["items"][i]["audio_codes"]))


def test_planned_generation_is_five_frames_per_code(pipe):
    r = pipe.generate("lofi piano", "[Verse]\nla la", duration=10.5, seed=3)
    item = r.params["items"][0]
    assert _codes(r) == 52 and item["task"] == "text2music" and item["runs_as"] == "cover" and item["frames"] == 52 * 5
    assert r.audio.shape == (1, 2, 52 * 5 * HOP_LENGTH)
    assert r.params["planner"]["thinking"] and r.params["planner"]["lm"] == "acestep-5Hz-lm-1.7B"
    assert item["duration"] == 10.5 and 30 <= item["bpm"] <= 300  # the user's duration, a planned bpm
    assert "lm" in r.timings and r.timings["total"] >= r.timings["lm"]
    again = pipe.generate("lofi piano", "[Verse]\nla la", duration=10.5, seed=3)
    assert torch.equal(again.audio, r.audio) and again.params["items"] == r.params["items"]


def test_missing_duration_comes_from_the_cot(pipe):
    r = pipe.generate("lofi piano", seed=4, plan_options=SHORT)
    item = r.params["items"][0]
    assert 10 <= item["duration"] <= 12
    assert _codes(r) == int(item["duration"] * 5)
    assert r.audio.shape[-1] == _codes(r) * 5 * HOP_LENGTH


def test_batch_takes_are_planned_per_seed(pipe):
    r = pipe.generate("lofi piano", bpm=90, keyscale="A minor", timesignature="4", duration=10, seed=7, batch=2)
    assert r.seeds == [7, 8] and r.audio.shape[0] == 2
    assert r.params["items"][0]["audio_codes"] != r.params["items"][1]["audio_codes"]
    alone = pipe.generate("lofi piano", bpm=90, keyscale="A minor", timesignature="4", duration=10, seed=8)
    assert alone.params["items"][0]["audio_codes"] == r.params["items"][1]["audio_codes"]
    torch.testing.assert_close(alone.audio[0], r.audio[1], atol=1e-4, rtol=0)


def test_no_lm_when_not_needed_or_audio_conditioned(pipe, plain):
    full = dict(bpm=90, keyscale="A minor", timesignature="4", duration=10, seed=1)
    off = pipe.generate("lofi", thinking=False, **full)
    assert "planner" not in off.params
    assert torch.equal(off.audio, plain.generate("lofi", **full).audio)
    cover = pipe.cover(_clip(1.0), "jazz", seed=3, thinking=True)  # pitfall 25: never LM codes here
    assert "planner" not in cover.params and cover.params["audio_codes"] is None
    metas = pipe.generate("lofi", seed=2, thinking=False, plan_options=SHORT)  # CoT only: fills the duration
    assert metas.params["planner"]["thinking"] is False and not metas.params["items"][0]["audio_codes"]
    assert 10 <= metas.params["items"][0]["duration"] <= 12


def test_user_codes_are_not_replanned(pipe):
    codes = "".join(f"<|audio_code_{i}|>" for i in range(55))
    r = pipe.generate("lofi", audio_codes=codes, bpm=90, keyscale="A minor", timesignature="4", seed=1)
    assert "planner" not in r.params and r.audio.shape[-1] == 55 * 5 * HOP_LENGTH


def test_audio_to_codes_count(pipe):
    clip = _clip(1.0)
    codes = pipe.audio_to_codes(clip)
    assert len(audio_code_ids(codes)) == 5  # 1 s = 25 frames = 5 codes
    assert pipe.audio_to_codes(clip) == codes  # the posterior mean: deterministic
    odd = _clip(1.3)  # 32 frames: the last window is padded with silence → ceil(32 / 5) = 7 codes
    assert len(audio_code_ids(pipe.audio_to_codes(odd))) == -(-(int(1.3 * SAMPLE_RATE) // HOP_LENGTH) // 5) == 7
    with pytest.raises(InvalidRequest):
        pipe.audio_to_codes(torch.zeros(2, 100))


def test_understand_round_trip(pipe, tmp_path):
    import soundfile as sf

    path = tmp_path / "song.wav"
    sf.write(path, _clip(1.0).T.numpy(), SAMPLE_RATE, subtype="FLOAT")
    desc = pipe.understand(path, seed=5, max_new_tokens=60)  # audio → codes → LM → fields
    assert isinstance(desc, SongDescription) and desc.text.startswith("<think>\n")
    assert desc.bpm is None or 30 <= desc.bpm <= 300
    codes = pipe.audio_to_codes(path, seed=5)  # what understand encoded (the VAE sampled with the seed)
    assert len(audio_code_ids(codes)) == 5
    assert pipe.understand(codes, seed=5, max_new_tokens=60) == desc


def test_score_takes(pipe, plain):
    r = pipe.generate("lofi piano", "la la", bpm=90, keyscale="A minor", timesignature="4", duration=10, seed=3)
    scores = pipe.score_takes(r)
    assert len(scores) == 1 and isinstance(scores[0], Score) and 0.0 <= scores[0].total <= 1.0
    assert {"caption", "lyrics", "bpm", "keyscale", "timesignature", "duration"} <= set(scores[0].fields)
    unplanned = GenerationResult(_clip(1.0)[None], SAMPLE_RATE, [1], {"caption": "lofi", "lyrics": "", "bpm": 90})
    assert len(pipe.score_takes(unplanned)) == 1  # codes made from the audio
    with pytest.raises(InvalidRequest, match="no planner"):
        plain.understand("x.wav")


def test_autogen_makes_the_next_batch_in_the_background(plain):
    request = GenerationRequest(caption="lofi", duration=10, seed=5, batch=2)
    first = plain.run(request)
    handle = plain.autogen(request, after=first)
    assert handle.seeds == [7, 8]
    second = handle.result(timeout=120)
    assert second.seeds == [7, 8]
    direct = plain.run(request.replace(seed=7))
    assert torch.equal(second.audio, direct.audio)
    assert plain.autogen(request).seeds == [7, 8]  # from the request's own seeds
    third = handle.next()
    assert third.seeds == [9, 10] and third.result(timeout=120).seeds == [9, 10]


def test_autogen_waits_for_a_foreground_run_and_can_be_cancelled(plain):
    request = GenerationRequest(caption="lofi", duration=10, seed=1)
    with plain._lock:  # a foreground run holds the pipeline
        handle = plain.autogen(request)
        assert not handle.done() and handle.cancel()
    assert handle.cancelled
    failing = plain.autogen(GenerationRequest(caption="no duration", seed=1))
    with pytest.raises(InvalidRequest, match="duration is required"):
        failing.result(timeout=60)
    assert isinstance(threading.current_thread(), threading.Thread)


def test_lm_selection(tiny_tree, tmp_path):
    lm_dir = tiny_tree / "acestep-5Hz-lm-1.7B"
    assert resolve_lm(tiny_tree, "auto", None, tmp_path, True) is None  # CPU tier: no LM
    assert resolve_lm(tiny_tree, "none", "1.7B", tmp_path, True) is None
    assert resolve_lm(tiny_tree, None, "1.7B", tmp_path, True) is None
    assert resolve_lm(tiny_tree, "1.7B", None, tmp_path, True) == lm_dir
    assert resolve_lm(tiny_tree, "auto", "1.7B", tmp_path, True) == lm_dir
    assert resolve_lm(tiny_tree, str(lm_dir), None, tmp_path, True) == lm_dir
    assert resolve_lm(tiny_tree, "auto", "4B", tmp_path, True) is None  # not installed: warn, go on
    with pytest.raises(ModelNotFound):
        resolve_lm(tiny_tree, "4B", None, tmp_path, True)
    with pytest.raises(ModelNotFound):
        resolve_lm(tiny_tree, "3B", None, tmp_path, True)


def test_offload_releases_the_lm_kv_cache_after_planning(pipe):
    """Small GPUs (offload on): the static runner's preallocated KV cache is freed once the plan
    is made, before the DiT and VAE run; the next run allocates it again."""
    import dataclasses

    from songstep.models.lm import PlannerLM, TransformersBackend
    from songstep.planner import Planner

    lm = pipe.planner.lm
    static = PlannerLM(lm.tokenizer, lm.model, TransformersBackend(lm.model, static_cache=True), lm.codes, lm.path)
    planner = Planner(static, caption_max_tokens=12, max_new_tokens=120)
    seen = []
    release = static.backend.release
    static.backend.release = lambda: seen.append(len(static.backend.runner._cache)) or release()
    small = Pipeline(dataclasses.replace(pipe.components, offload=True), pipe.tier, planner)
    first = small.generate("lofi piano", "[Verse]\nla la", duration=10.5, seed=3)
    assert seen == [2] and len(static.backend.runner._cache) == 0  # CoT (B=1) and codes (B=2) entries
    again = small.generate("lofi piano", "[Verse]\nla la", duration=10.5, seed=3)
    assert seen == [2, 2] and torch.equal(again.audio, first.audio)
    resident = Pipeline(pipe.components, pipe.tier, planner).generate("lofi piano", "[Verse]\nla la", duration=10.5, seed=3)
    assert seen == [2, 2] and len(static.backend.runner._cache) == 2
    assert torch.equal(resident.audio, first.audio)


def test_progress_covers_planning_tokens(pipe):
    seen = []
    pipe.generate("lofi piano", "[Verse]\nla la", duration=10.5, seed=3,
                  progress=lambda stage, done, total: seen.append((stage, done, total)))
    stages = [s for s, _, _ in seen]
    assert stages.index("lm") < stages.index("lm-codes") < stages.index("dit") < stages.index("vae")
    assert ("lm-codes", 53, 53) in seen  # 52 codes + EOS
    lm_done = [(d, t) for s, d, t in seen if s == "lm"]
    assert lm_done[-1][0] == lm_done[-1][1] and len(lm_done) > 1


def test_autogen_cancel_stops_a_running_batch(plain):
    from concurrent.futures import CancelledError

    holder, seen = [], []
    started = threading.Event()

    def progress(stage, done, total):
        seen.append((stage, done))
        started.set()
        if stage == "dit" and done == 2:
            holder[0].cancel()  # as a UI would, from another thread, mid-run

    request = GenerationRequest(caption="lofi", duration=10, seed=1, steps=8)
    holder.append(plain.autogen(request, progress=progress))
    assert started.wait(60)
    with pytest.raises(CancelledError):
        holder[0].result(timeout=120)
    assert holder[0].cancelled and not holder[0].cancel()  # already stopped
    assert ("dit", 3) not in seen and not any(s == "vae" for s, _ in seen)
    assert plain.generate("lofi", duration=10, seed=1).audio.shape[0] == 1  # the pipeline is free again
