"""The planner on a real vLLM engine (CPU build), against the transformers backend.

Runs where vllm is installed (`bash tests/vllm_env.sh`, part of `.ci/run`); skipped elsewhere.
The tiny LM here has head_dim 32 (vLLM's CPU attention kernels need ≥ 32)."""

import pytest
import torch

pytest.importorskip("vllm")

from songstep.errors import Cancelled  # noqa: E402
from songstep.models.lm_vllm import COND, KEY_ARG, ROLE_ARG, UNCOND, HookRegistry, _hook_processor_class  # noqa: E402
from songstep.planner import Planner  # noqa: E402
from songstep.request import GenerationRequest  # noqa: E402
from songstep.testing.tiny_lm import write_tiny_lm  # noqa: E402

pytestmark = pytest.mark.vllm

REQUEST = GenerationRequest(caption="a calm piano song", lyrics="[verse]\nla la la", duration=12)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_lm(
        tmp_path_factory.mktemp("vllm_lm"), seed=0, head_dim=32, hidden_size=64, num_attention_heads=2,
        num_key_value_heads=1,
    )


@pytest.fixture(scope="module")
def on_vllm(folder):
    return Planner.from_pretrained(folder, device="cpu", backend="vllm", vllm_options={"max_rows": 8, "max_model_len": 2048})


@pytest.fixture(scope="module")
def on_hf(folder):
    return Planner.from_pretrained(folder, device="cpu")


def _codes(plan):
    return plan.request.audio_codes.count("<|audio_code_")


@pytest.mark.parametrize("options", [dict(top_k=1), dict(top_k=1, cfg_scale=1.0), dict(temperature=0.0)])
def test_deterministic_sampling_matches_the_transformers_backend(on_vllm, on_hf, options):
    """With one candidate per step (top-k 1 or greedy) the draw cannot differ, so the two
    backends must agree token for token: CFG, grammar, masks and filters in the same order."""
    a, b = on_vllm.plan(REQUEST, seed=3, **options), on_hf.plan(REQUEST, seed=3, **options)
    assert a.text == b.text  # raw phase-1 text (ends at the grammar's EOS) + codes
    assert a.request.audio_codes == b.request.audio_codes
    assert (a.request.bpm, a.request.keyscale, a.request.timesignature, a.request.caption) == (
        b.request.bpm, b.request.keyscale, b.request.timesignature, b.request.caption,
    )
    assert _codes(a) == 60


def test_sampled_plans_are_reproducible_and_batch_items_match_single_plans(on_vllm):
    request = REQUEST.replace(bpm=120)
    batch = on_vllm.plan_batch(request, seeds=[5, 6, 7])
    again = on_vllm.plan_batch(request, seeds=[5, 6, 7])
    single = on_vllm.plan(request, seed=6)
    assert [p.request.audio_codes for p in batch] == [p.request.audio_codes for p in again]
    assert single.request.audio_codes == batch[1].request.audio_codes
    assert len({p.request.audio_codes for p in batch}) == 3
    assert all("<|audio_code_" not in p.cot_text for p in batch)
    assert all(_codes(p) == 60 and p.request.bpm == 120 for p in batch)


def test_free_length_codes_stop_at_eos_or_the_cap(on_vllm):
    plan = on_vllm.plan(REQUEST.replace(duration=None), seed=1, use_cot_metas=False, enforce_cot_duration=False)
    assert _codes(plan) > 0


def test_progress_counts_steps_and_cancel_leaves_the_engine_usable(on_vllm):
    seen = []

    def progress(stage, done, total):
        seen.append((stage, done, total))

    on_vllm.plan(REQUEST, seed=2, progress=progress)
    codes = [(d, t) for s, d, t in seen if s == "lm-codes"]
    assert codes[-1] == (61, 61) and len(codes) > 2  # 60 codes + the EOS step

    def cancel(stage, done, total):
        if stage == "lm-codes" and done >= 16:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        on_vllm.plan(REQUEST, seed=2, progress=cancel)
    assert not on_vllm.lm.backend.llm.llm_engine.has_unfinished_requests()
    assert _codes(on_vllm.plan(REQUEST, seed=2)) == 60


def test_text_phases_run(on_vllm, on_hf):
    a = on_vllm.format("a calm piano song", "[verse]\nla la", seed=4, top_k=1, max_new_tokens=300)
    b = on_hf.format("a calm piano song", "[verse]\nla la", seed=4, top_k=1, max_new_tokens=300)
    assert a == b and a.bpm is not None
    sample = on_vllm.create_sample("a sad song about rain", seed=4, max_new_tokens=300)
    assert sample.caption and 30 <= sample.bpm <= 300
    codes = "".join(f"<|audio_code_{i}|>" for i in (5, 9, 700, 31))
    a = on_vllm.understand_codes(codes, seed=2, top_k=1, max_new_tokens=200)
    assert a == on_hf.understand_codes(codes, seed=2, top_k=1, max_new_tokens=200)


def test_planning_from_another_thread(on_vllm):
    """AutoGen plans the next batch in a background thread."""
    import threading

    out = {}
    worker = threading.Thread(target=lambda: out.setdefault("plan", on_vllm.plan(REQUEST, seed=9)))
    worker.start()
    worker.join(300)
    assert _codes(out["plan"]) == 60
    assert out["plan"].request.audio_codes == on_vllm.plan(REQUEST, seed=9).request.audio_codes


def test_autoscore_from_prompt_logprobs_matches_logits(on_vllm, on_hf):
    codes = on_hf.plan(REQUEST, seed=3).request.audio_codes
    kwargs = dict(caption="a calm piano song", lyrics="la la la", metadata={"bpm": 96, "keyscale": "C major"})
    a, b = on_vllm.score(codes, **kwargs), on_hf.score(codes, **kwargs)
    assert a.fields.keys() == b.fields.keys() == {"bpm", "keyscale", "caption", "lyrics"}
    for key in a.pmi:
        assert a.pmi[key] == pytest.approx(b.pmi[key], abs=1e-3)
    for key in ("bpm", "keyscale"):
        assert a.fields[key] == pytest.approx(b.fields[key], abs=1e-6)
    caps = on_vllm.lm.backend.capabilities
    assert not caps.full_logits and not caps.step_wise and not caps.restricted_head
    assert not hasattr(on_vllm.lm.backend, "logits") and not hasattr(on_vllm.lm.backend, "prefill")
    assert len(on_vllm.lm.backend.hooks) == 0  # every generate call took its hook away again


def test_engine_runs_in_process_on_the_v1_runner(on_vllm):
    config = on_vllm.lm.backend.llm.llm_engine.vllm_config
    assert config.use_v2_model_runner is False
    assert type(on_vllm.lm.backend.llm.llm_engine.engine_core).__name__ == "InprocClient"


def test_row_hook_processor_tracks_batch_moves():
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

    proc = _hook_processor_class(HookRegistry())(None, torch.device("cpu"), False)

    def params(key, role):
        return SamplingParams(extra_args={KEY_ARG: key, ROLE_ARG: role})

    out_a, out_b = [], [7]
    added = [(0, params("a", COND), [1], out_a), (1, params("a", UNCOND), [2], out_b), (2, SamplingParams(), [3], [])]
    proc.update_state(BatchUpdate(batch_size=3, removed=[], added=added, moved=[]))
    assert proc.slots == {0: ("a", COND, out_a), 1: ("a", UNCOND, out_b)}
    proc.update_state(BatchUpdate(batch_size=3, removed=[], added=[], moved=[(0, 2, MoveDirectionality.SWAP)]))
    assert proc.slots == {2: ("a", COND, out_a), 1: ("a", UNCOND, out_b)}
    proc.update_state(BatchUpdate(batch_size=2, removed=[1], added=[], moved=[(2, 0, MoveDirectionality.UNIDIRECTIONAL)]))
    assert proc.slots == {0: ("a", COND, out_a)}


def test_cli_plan_on_vllm(folder, on_vllm, capsys):
    """`songstep plan --lm-backend vllm` (a second engine in this process), leaving the
    process's global torch random state alone."""
    import json

    from songstep.cli import main

    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    code = main(["plan", "--lm", str(folder), "--lm-backend", "vllm", "--device", "cpu", "--caption", "lofi",
                 "--duration", "10", "--seed", "3", "--quiet"])
    out = capsys.readouterr()
    assert code == 0, out.err
    plan = json.loads(out.out)
    assert plan["code_count"] == 50 and plan["seed"] == 3
    assert torch.equal(torch.rand(3), expected)


def test_pipeline_generates_with_the_vllm_planner(tiny_tree, folder, on_vllm):
    """Pipeline.from_pretrained(lm_backend="vllm"): the plan's codes drive the tiny DiT."""
    from songstep.constants import HOP_LENGTH
    from songstep.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(tiny_tree, variant="turbo", device="cpu", lm=str(folder), lm_backend="vllm")
    pipe.planner.caption_max_tokens = 12
    r = pipe.generate("lofi piano", "[Verse]\nla la", duration=10.4, seed=3)
    item = r.params["items"][0]
    assert item["task"] == "text2music" and item["runs_as"] == "cover" and item["frames"] == 52 * 5
    assert r.audio.shape == (1, 2, 52 * 5 * HOP_LENGTH)
    again = pipe.generate("lofi piano", "[Verse]\nla la", duration=10.4, seed=3)
    assert torch.equal(again.audio, r.audio)
