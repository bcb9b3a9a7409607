"""songstep.planner: plan (phase 1 CoT, phase 2 codes), simple mode, format, understand, AutoScore.

The planner runs the tiny random LM of the tiny checkpoint tree; its text is gibberish, but the
grammar keeps the metadata well-formed and the code phase exact.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from songstep.constants import KEYSCALES, LANGUAGES, THINK_END
from songstep.errors import InvalidRequest
from songstep.models.lm import STEPWISE, WHOLE_REQUEST, stats_from_logits
from songstep.planner import Planner, PlanOptions, SongDescription, phases, scoring
from songstep.prompts import audio_code_ids, parse_lm_output
from songstep.request import GenerationRequest

pytest.importorskip("llguidance")  # the `grammar` extra: constrained metadata


@pytest.fixture(scope="module")
def planner(tiny_tree):
    # short captions and a 20 s CoT limit keep the tiny LM's gibberish (and the codes) short
    return Planner.from_pretrained(
        tiny_tree / "acestep-5Hz-lm-1.7B", device="cpu", max_duration=20, caption_max_tokens=12, max_new_tokens=120
    )


SONG = GenerationRequest(caption="dreamy synth pop", lyrics="[Verse]\nla la la")


# --- phase 2: the code count ------------------------------------------------------------------


@pytest.mark.parametrize("duration", [10.0, 12.34, 15.9])
def test_code_count_is_duration_times_five(planner, duration):
    plan = planner.plan(SONG.replace(duration=duration), seed=1)
    assert plan.code_count == int(duration * 5)
    assert all(0 <= c < 64000 for c in audio_code_ids(plan.audio_codes))
    assert plan.request.audio_codes == plan.audio_codes and plan.request.duration == duration


def test_cot_duration_fixes_the_count_without_a_user_duration(planner):
    plan = planner.plan(SONG, seed=2)
    assert 10 <= plan.request.duration <= 20  # the CoT's choice, within the planner's limit
    assert plan.code_count == int(plan.request.duration * 5) == plan.metadata["duration"] * 5
    free = planner.plan(SONG.replace(bpm=90, keyscale="A minor", timesignature="4"), seed=2,
                        use_cot_metas=False, enforce_cot_duration=False, cfg_scale=1.0)
    assert free.request.duration is None and 0 < free.code_count <= 20 * 5 + 10  # upstream: free count


# --- user values win ----------------------------------------------------------------------------


def test_user_fields_are_never_overwritten(planner):
    request = SONG.replace(bpm=97, keyscale="F♯ minor", timesignature="3/4", language="ja")
    plan = planner.plan(request, seed=3)
    r = plan.request
    # "3/4" was normalised to "3" once, in the request type
    assert (r.bpm, r.keyscale, r.timesignature, r.language, r.lyrics) == (97, "F♯ minor", "3", "ja", SONG.lyrics)
    assert plan.metadata["bpm"] == 97 and plan.metadata["keyscale"] == "F♯ minor"
    assert plan.metadata["timesignature"] == "3" and plan.metadata["language"] == "ja"
    assert 10 <= r.duration <= 20  # the one blank field, filled
    cot = parse_lm_output(plan.text)  # the phase-1 text itself carries the forced values
    assert (cot.bpm, cot.keyscale, cot.timesignature, cot.language) == (97, "F♯ minor", "3", "ja")
    assert plan.cot_text.startswith("<think>\nbpm: 97\ncaption: ")


def test_all_metas_given_skips_phase_one(planner):
    request = SONG.replace(bpm=120, keyscale="C major", timesignature="4", duration=10)
    plan = planner.plan(request, seed=4)
    assert plan.lm_metadata == {} and not plan.text.startswith("<think>")
    assert plan.metadata == {"bpm": 120, "keyscale": "C major", "timesignature": "4", "duration": 10}
    assert plan.cot_text == "<think>\nbpm: 120\nduration: 10\nkeyscale: C major\ntimesignature: 4\n</think>"
    assert plan.request.caption == SONG.caption and plan.code_count == 50


def test_blank_fields_are_filled_with_valid_values(planner):
    plan = planner.plan(SONG.replace(duration=10), seed=5)
    r = plan.request
    assert 30 <= r.bpm <= 300 and r.keyscale in KEYSCALES and r.timesignature in ("2", "3", "4", "6")
    assert r.language in LANGUAGES and r.language == plan.lm_metadata["language"]  # propagated
    assert r.caption == plan.lm_metadata["caption"] != SONG.caption  # CaptionRewrite
    kept = planner.plan(SONG.replace(duration=10), seed=5, propagate_language=False, use_cot_caption=False)
    assert kept.request.language == "unknown" and kept.request.caption == SONG.caption
    assert "caption" not in kept.metadata


def test_metadata_only_without_thinking(planner):
    plan = planner.plan(SONG, seed=6, thinking=False)
    assert plan.audio_codes == "" and plan.request.audio_codes is None and plan.request.duration is not None


# --- determinism and batches ----------------------------------------------------------------------


def test_same_seed_same_plan_and_batch_items_alone(planner):
    a = planner.plan(SONG.replace(duration=10), seed=11)
    b = planner.plan(SONG.replace(duration=10), seed=11)
    c = planner.plan(SONG.replace(duration=10), seed=12)
    assert a == b and a.text == b.text
    assert a.audio_codes != c.audio_codes
    batch = planner.plan_batch(SONG.replace(duration=10, seed=11, batch=2))
    assert [p.seed for p in batch] == [11, 12]
    assert batch[0] == a and batch[1] == c  # item i of a batch seeded N = a plan seeded N+i
    assert all(p.request.batch == 1 for p in batch)
    g = torch.Generator().manual_seed(11)
    assert planner.plan(SONG.replace(duration=10), generator=g).seed == 11


def test_phase_one_never_uses_cfg(planner, monkeypatch):
    seen = []
    real = phases.decode

    def spy(backend, rows, params, **kw):
        seen.append((kw.get("head") is not None, params.cfg_scale, all(r.uncond_prompt is not None for r in rows)))
        return real(backend, rows, params, **kw)

    monkeypatch.setattr(phases, "decode", spy)
    planner.plan(SONG.replace(duration=10), seed=1, cfg_scale=3.0)
    assert seen == [(False, 1.0, False), (True, 3.0, True)]  # CoT without CFG, codes with CFG


def test_legacy_prompt_layout_runs(planner):
    plan = planner.plan(SONG.replace(duration=10, bpm=100, keyscale="C major", timesignature="4"),
                        seed=1, legacy_prompts=True)
    assert plan.code_count == 50


def test_duration_above_the_lm_limit_plans_no_codes(planner):
    plan = planner.plan(SONG.replace(duration=30), seed=1)
    assert plan.audio_codes == "" and plan.request.duration == 30


def test_unknown_option_and_bad_request(planner):
    with pytest.raises(InvalidRequest, match="unknown planner option"):
        planner.plan(SONG, seed=1, temprature=0.5)
    with pytest.raises(InvalidRequest):
        planner.plan(SONG.replace(bpm=5), seed=1)


# --- malformed output ---------------------------------------------------------------------------------


def test_unconstrained_plan_with_garbage_output_does_not_raise(planner):
    plan = planner.plan(SONG.replace(duration=10), seed=7, constrained=False)
    r = plan.request
    assert plan.code_count == 50
    assert r.bpm is None or 30 <= r.bpm <= 300
    assert r.keyscale is None or r.keyscale in KEYSCALES
    assert r.timesignature is None or r.timesignature in ("2", "3", "4", "6")
    assert r.language in LANGUAGES


def test_malformed_cot_values_are_dropped():
    text = "<think>\nbpm: fast\nduration: 9999\nkeyscale: H major\ntimesignature: 5/8\nlanguage: klingon\n"
    merged, lm = phases.merge_metadata({"bpm": 80}, parse_lm_output(text), PlanOptions(), 600)
    assert lm == {} and merged == {"bpm": 80}
    good = "<think>\nbpm: 128\ncaption: warm\n  pads\nduration: 42\nkeyscale: D minor\nlanguage: 'no'\ntimesignature: 6\n"
    merged, lm = phases.merge_metadata({}, parse_lm_output(good), PlanOptions(), 600)
    assert lm == {"bpm": 128, "caption": "warm pads", "duration": 42, "keyscale": "D minor", "language": "no",
                  "timesignature": "6"}


# --- simple mode, format, understand -------------------------------------------------------------------


def test_create_sample(planner):
    desc = planner.create_sample("a sad piano ballad about rain", language="fr", instrumental=True, seed=1,
                                 max_new_tokens=60)
    assert isinstance(desc, SongDescription) and desc.language == "fr" and desc.instrumental
    assert desc.lyrics  # the LM's, or [Instrumental]
    assert desc.bpm is None or 30 <= desc.bpm <= 300
    again = planner.create_sample("a sad piano ballad about rain", language="fr", instrumental=True, seed=1,
                                  max_new_tokens=60)
    assert again == desc
    assert desc.to_request().instrumental and desc.to_request().language == "fr"
    with pytest.raises(InvalidRequest):
        planner.create_sample("x", language="xx")


def test_format_keeps_the_users_values(planner):
    desc = planner.format("rock", "", bpm=140, keyscale="E minor", timesignature="3/4", duration=33, language="de",
                          seed=2, max_new_tokens=60)
    assert (desc.bpm, desc.keyscale, desc.timesignature, desc.duration, desc.language) == (140, "E minor", "3", 33, "de")
    assert desc.lyrics  # formatted, or the [Instrumental] the prompt used
    assert "\nbpm: 140\n" in desc.text and "\nlanguage:" not in desc.text.split(THINK_END)[0]


def test_understand_codes(planner):
    plan = planner.plan(SONG.replace(duration=10, bpm=100, keyscale="C major", timesignature="4"), seed=1)
    desc = planner.understand_codes(plan.audio_codes, seed=3, max_new_tokens=60)
    assert desc.text.startswith("<think>\n") and "<|audio_code_" not in desc.text
    same = planner.understand(list(audio_code_ids(plan.audio_codes)), seed=3, max_new_tokens=60)
    assert same == desc
    with pytest.raises(InvalidRequest):
        planner.understand_codes("no codes here")
    with pytest.raises(InvalidRequest, match="encoder"):
        planner.understand("song.wav")


# --- AutoScore ----------------------------------------------------------------------------------------


def test_topk_recall_and_log_prob_by_hand():
    logits = torch.tensor([
        [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],   # target 0: rank 1 → 1.0
        [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],   # target 2: rank 3 → 1 − 2/4 = 0.5
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],   # target 0: rank 6 > k → 0
    ])
    targets = torch.tensor([0, 2, 0])
    assert scoring.topk_recall(logits, targets, k=4) == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.6, 0.3]])
    lp = scoring.mean_log_prob(probs.log(), torch.tensor([1, 2]))
    assert lp == pytest.approx((math.log(0.25) + math.log(0.3)) / 2, rel=1e-6)
    assert scoring.mean_log_prob(probs[:0], torch.tensor([], dtype=torch.long)) == float("-inf")


def test_scores_from_ranks_and_log_probs_equal_scores_from_logits():
    """The vLLM backend gives each target's rank and log-probability instead of logits."""
    logits = torch.randn(7, 50, generator=torch.Generator().manual_seed(0)) * 3
    targets = torch.randint(0, 50, (7,), generator=torch.Generator().manual_seed(1))
    picked = logits.gather(-1, targets.view(-1, 1))
    ranks = (logits > picked).sum(-1) + 1
    log_probs = torch.log_softmax(logits, -1).gather(-1, targets.view(-1, 1)).flatten()
    from_logits = scoring.Forced(logits, targets)
    from_stats = scoring.Forced(targets=targets, log_probs=log_probs, ranks=ranks)
    for k in (1, 5, 10, 50):
        assert from_stats.recall(k) == pytest.approx(from_logits.recall(k), abs=1e-7)
    assert from_stats.mean_log_prob() == pytest.approx(from_logits.mean_log_prob(), abs=1e-6)
    assert scoring.ranks_recall(torch.tensor([1, 3, 11]), k=10) == pytest.approx((1.0 + 0.8 + 0.0) / 3)


def test_pmi_and_reward_by_hand():
    assert scoring.pmi_score(-1.0, -1.5, scale=0.5) == pytest.approx(1 / (1 + math.exp(-1.0)))
    assert scoring.pmi_score(-900.0, 0.0, scale=0.1) == pytest.approx(0.0)  # no overflow
    full = {"caption": 0.8, "lyrics": 0.5, "bpm": 1.0, "keyscale": 0.0}
    assert scoring.reward(full) == pytest.approx(0.5 * 0.8 + 0.3 * 0.5 + 0.2 * 0.5)
    assert scoring.reward({"caption": 0.8, "bpm": 1.0}) == pytest.approx((0.5 * 0.8 + 0.2 * 1.0) / 0.7)
    assert scoring.reward({"bpm": 0.25, "duration": 0.75}) == pytest.approx(0.5)
    assert scoring.reward({}) == 0.0
    assert scoring.field_target("timesignature", "4/4") == "<think>\ntimesignature: 4\n</think>\n"
    assert scoring.field_target("duration", 30.0) == "<think>\nduration: 30\n</think>\n"


class _ToyTokenizer:
    """Characters as tokens (code point mod 257); a chat template without `|`."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:\n"


class _ToyBackend:
    """Teacher-forced logits: a perfect predictor (logit 10 on the true next token) when the
    sequence holds a `|` (the codes are in the prompt), else uniform."""

    capabilities = STEPWISE
    vocab_size = 257
    device = torch.device("cpu")

    def logits(self, ids, mask=None):
        out = torch.zeros(ids.shape[0], ids.shape[1], self.vocab_size)
        if (ids == ord("|")).any():
            out[0, torch.arange(ids.shape[1] - 1), ids[0, 1:]] = 10.0
        return out


class _ToyStatsBackend(_ToyBackend):
    """The same predictor behind the whole-request interface: scoring must read `target_stats`."""

    capabilities = WHOLE_REQUEST

    def target_stats(self, ids, start):
        logits = _ToyBackend.logits(self, torch.tensor([ids]))[0]
        return stats_from_logits(logits[start - 1 : -1], torch.tensor(ids[start:]))

    def logits(self, ids, mask=None):
        raise AssertionError("a backend without full_logits is never asked for logits")


@pytest.mark.parametrize("backend", [_ToyBackend, _ToyStatsBackend])
def test_score_codes_against_a_hand_computation(backend):
    lm = SimpleNamespace(tokenizer=_ToyTokenizer(), backend=backend(),
                         encode=lambda text: [ord(ch) % 257 for ch in text])
    score = scoring.score_codes(SimpleNamespace(lm=lm), "<|audio_code_7|><|audio_code_9|>", caption="calm piano",
                                lyrics="la la", metadata={"bpm": 120, "language": "en", "genres": None}, scale=0.5)
    cond = math.log(math.exp(10) / (math.exp(10) + 256))
    uncond = math.log(1 / 257)
    expected = 1 / (1 + math.exp(-(cond - uncond) / 0.5))
    assert score.fields["bpm"] == 1.0 and score.fields["language"] == 1.0 and "genres" not in score.fields
    assert score.pmi["caption"] == pytest.approx(cond - uncond, rel=1e-5)
    assert score.fields["caption"] == pytest.approx(expected, rel=1e-5)
    assert score.fields["lyrics"] == pytest.approx(expected, rel=1e-5)
    assert score.total == pytest.approx(0.5 * expected + 0.3 * expected + 0.2 * 1.0, rel=1e-5)


def test_score_and_rank_with_the_tiny_lm(planner):
    plans = planner.plan_batch(SONG.replace(duration=10, seed=20, batch=2))
    ranked = planner.rank(plans)
    assert sorted(i for i, _ in ranked) == [0, 1]
    assert ranked[0][1].total >= ranked[1][1].total
    score = ranked[0][1]
    assert {"caption", "lyrics", "bpm", "duration"} <= set(score.fields)
    assert all(0.0 <= v <= 1.0 for v in score.fields.values())
    again = planner.score(plans[ranked[0][0]].audio_codes, caption=plans[ranked[0][0]].request.caption,
                          lyrics=SONG.lyrics, metadata={k: v for k, v in plans[ranked[0][0]].metadata.items()
                                                         if k != "caption"})
    assert again.total == pytest.approx(score.total)
    with pytest.raises(InvalidRequest):
        planner.rank([planner.plan(SONG, seed=1, thinking=False)])
