"""Planner sampling: logits processing numbers, CFG, determinism, constrained metadata and codes."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from songstep.constants import KEYSCALES, LANGUAGES, THINK_END
from songstep.errors import InvalidRequest, SongstepError
from songstep.models.lm import STEPWISE, WHOLE_REQUEST, head_columns
from songstep.prompts import build_phase1_prompt, parse_lm_output, render_chat_prompt
from songstep.sampling.grammar import (
    CodeConstraint,
    GrammarVocab,
    MetadataConstraint,
    MetadataSpec,
    code_token_cap,
    metadata_lark,
    target_codes,
)
from songstep.sampling.lm import (
    DecodeRow,
    SamplingParams,
    cfg_combine,
    decode,
    filter_logits,
    probabilities,
    sample_rows,
)


@pytest.fixture(scope="module")
def vocab(lm):
    pytest.importorskip("llguidance")  # the `grammar` extra
    return GrammarVocab.from_tokenizer(lm.tokenizer, lm.backend.vocab_size)


@pytest.fixture(scope="module")
def prompt(lm):
    return lm.encode(render_chat_prompt(lm.tokenizer, build_phase1_prompt("a bright pop song", "la la la")))


def _code_range(lm) -> range:
    return range(lm.codes.first_id, lm.codes.first_id + lm.codes.valid)


# --- logits processing against hand computations -------------------------------------------


def test_cfg_combine_hand_computation():
    cond = torch.tensor([[1.0, 2.0, 0.0]], dtype=torch.bfloat16)
    uncond = torch.tensor([[0.0, 3.0, 0.5]], dtype=torch.bfloat16)
    out = cfg_combine(cond, uncond, 2.5)
    assert out.dtype == torch.float32
    assert out.tolist() == [[0.0 + 2.5 * 1.0, 3.0 + 2.5 * -1.0, 0.5 + 2.5 * -0.5]]


def _logits(probs):
    return torch.tensor([[math.log(p) for p in probs]])


def test_top_p_runs_on_untempered_logits_then_temperature():
    logits = _logits([0.5, 0.3, 0.15, 0.05])
    params = SamplingParams(temperature=0.5, top_p=0.6)
    filtered = filter_logits(logits, params)
    # ascending cumulative 0.05, 0.20, 0.50, 1.0: tokens with cum ≤ 0.4 go → {0.5, 0.3} stay
    assert torch.isinf(filtered[0, 2:]).all() and torch.isfinite(filtered[0, :2]).all()
    probs = probabilities(filtered, params.temperature)
    expected = [0.25 / 0.34, 0.09 / 0.34, 0.0, 0.0]  # p^(1/T) renormalised
    torch.testing.assert_close(probs[0], torch.tensor(expected), atol=1e-6, rtol=1e-5)
    # tempering first would have kept only the top token (0.685 > 0.6): the order matters
    tempered_first = filter_logits(logits / 0.5, SamplingParams(top_p=0.6))
    assert torch.isfinite(tempered_first).sum() == 1


def test_top_k_and_off_switches():
    logits = _logits([0.1, 0.4, 0.2, 0.3])
    kept = filter_logits(logits, SamplingParams(top_k=2, top_p=1.0))
    assert torch.isfinite(kept[0]).tolist() == [False, True, False, True]
    torch.testing.assert_close(filter_logits(logits, SamplingParams(top_k=0, top_p=1.0)), logits)
    probs = probabilities(kept, 1.0)
    torch.testing.assert_close(probs[0], torch.tensor([0.0, 4 / 7, 0.0, 3 / 7]))


def test_repetition_penalty_hand_computation():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    out = filter_logits(logits, SamplingParams(repetition_penalty=2.0, top_p=1.0), [torch.tensor([0, 1])])
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0]]


def test_sampling_params_validation():
    with pytest.raises(InvalidRequest):
        SamplingParams(top_p=0.0)
    with pytest.raises(InvalidRequest):
        SamplingParams(repetition_penalty=0.0)


def test_sample_rows_uses_each_generator():
    probs = torch.full((2, 1000), 1e-3)
    a = sample_rows(probs, [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    b = sample_rows(probs, [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    assert a.tolist() == b.tolist() and a[0] != a[1]


class _FixedBackend:
    """Step-wise backend stub returning fixed logits rows (cond rows first, then uncond rows)."""

    capabilities = STEPWISE

    def __init__(self, logits):
        self.logits, self.vocab_size, self.device, self.batches = (
            logits,
            logits.shape[-1],
            torch.device("cpu"),
            [],
        )

    def prefill(self, input_ids, attention_mask, *, max_new_tokens, head=None):
        self.batches.append(input_ids.shape[0])
        return self, self.logits.clone()

    def step(self, tokens):
        return self.logits.clone()


def test_decode_applies_cfg_before_choosing():
    cond, uncond = [1.0, 2.0, 0.0, -9.0], [0.0, 3.0, 0.0, -9.0]
    backend = _FixedBackend(torch.tensor([cond, uncond]))
    params = SamplingParams(temperature=0.0, cfg_scale=2.0)
    rows = [DecodeRow([5, 6], uncond_prompt=[7])]
    out = decode(backend, rows, params, eos_id=3, pad_id=0, max_new_tokens=2)
    # combined = [2, 1, 0, -9] → argmax 0, while the conditional argmax would be 1
    assert out[0].tokens == [0, 0] and backend.batches == [2]
    with pytest.raises(InvalidRequest):
        decode(backend, [DecodeRow([5])], params, eos_id=3, pad_id=0, max_new_tokens=1)


class _WholeRequestBackend:
    """A `RequestBackend` stub in the shape of vLLM's: it runs each request to its end and asks
    the row hook to process every step's raw logits (cond row 0, uncond row 1) before its own
    greedy pick."""

    capabilities = WHOLE_REQUEST
    device = torch.device("cpu")
    max_model_len = 64

    def __init__(self, logits):
        self.logits, self.vocab_size, self.calls = logits, logits.shape[-1], 0

    def groups(self, requests):
        return [list(requests)]

    def generate(self, requests, sampling, hook, *, stop_token_id, on_step=None):
        from songstep.models.lm_vllm import VLLMOutput

        outputs = []
        for i, req in enumerate(requests):
            cond, uncond = [], []
            while len(cond) < req.max_tokens and (not cond or cond[-1] != stop_token_id):
                x = self.logits.clone()
                hook(x, {f"cond:{i}": (0, list(cond)), f"uncond:{i}": (1, list(uncond))})
                assert torch.equal(x[0], x[1])  # the pair gets the same processed logits
                cond.append(int(x[0].argmax()))
                uncond.append(cond[-1])
                self.calls += 1
            outputs.append(VLLMOutput(cond, uncond))
        return outputs


def test_decode_dispatches_on_declared_capabilities():
    """A whole-request backend goes through the row-hook loop and gives the step-wise loop's
    tokens (greedy, so the samplers' draws do not matter); neither needs the other's methods."""
    cond, uncond = [1.0, 2.0, 0.0, -9.0], [0.0, 3.0, 0.0, -9.0]
    params = SamplingParams(temperature=0.0, cfg_scale=2.0)
    rows = [DecodeRow([5, 6], uncond_prompt=[7])]
    whole = _WholeRequestBackend(torch.tensor([cond, uncond]))
    assert not hasattr(whole, "prefill") and not hasattr(_FixedBackend, "generate")
    out = decode(whole, rows, params, eos_id=3, pad_id=0, max_new_tokens=3)
    stepwise = decode(_FixedBackend(torch.tensor([cond, uncond])), rows, params, eos_id=3, pad_id=0, max_new_tokens=3)
    assert out[0].tokens == stepwise[0].tokens == [0, 0, 0] and whole.calls == 3
    with pytest.raises(InvalidRequest, match="full LM head"):
        decode(whole, rows, params, eos_id=3, pad_id=0, max_new_tokens=3, head=((0, 2),))


class _Nothing:
    """A constraint that allows no token."""

    finished = greedy = False

    def allowed(self, device="cpu"):
        return torch.zeros(4, dtype=torch.bool, device=device)

    def advance(self, token_id):
        raise AssertionError("no token may be chosen")


@pytest.mark.parametrize("temperature", [0.0, 0.85])
def test_constraint_that_allows_nothing_raises(temperature):
    backend = _FixedBackend(torch.tensor([[1.0, 2.0, 0.0, -9.0]]))
    rows = [DecodeRow([5], constraint=_Nothing(), generator=torch.Generator().manual_seed(0))]
    with pytest.raises(SongstepError, match="allows no token"):
        decode(backend, rows, SamplingParams(temperature=temperature), eos_id=3, pad_id=0, max_new_tokens=2)


# --- decode loop with the tiny LM ------------------------------------------------------------


def _metadata_rows(vocab, prompt, seeds, **spec):
    spec.setdefault("caption_max_tokens", 32)
    return [
        DecodeRow(
            prompt,
            constraint=MetadataConstraint(vocab, MetadataSpec(**spec)),
            generator=torch.Generator().manual_seed(s),
        )
        for s in seeds
    ]


def test_same_seed_same_tokens(lm, vocab, prompt):
    def run(seeds):
        rows = _metadata_rows(vocab, prompt, seeds)
        return [
            r.tokens
            for r in decode(
                lm.backend, rows, SamplingParams(), eos_id=lm.eos_id, pad_id=lm.pad_id, max_new_tokens=200
            )
        ]

    first = run([7, 8])
    assert run([7, 8]) == first
    assert run([8])[0] == first[1]  # a row's tokens do not depend on its batch neighbours
    assert first[0] != first[1]


def test_phase1_block_parses_and_stops_before_think_end(lm, vocab, prompt):
    user = {"bpm": 128, "keyscale": "F♯ minor", "timesignature": "3/4"}
    rows = _metadata_rows(vocab, prompt, [0, 1], user_values=user, max_duration=240)
    for res in decode(
        lm.backend, rows, SamplingParams(), eos_id=lm.eos_id, pad_id=lm.pad_id, max_new_tokens=300
    ):
        text = lm.tokenizer.decode(res.tokens)
        assert res.eos and THINK_END not in text and text.endswith("\n")
        out = parse_lm_output(text)
        assert (out.bpm, out.keyscale, out.timesignature) == (128, "F♯ minor", "3")
        assert 10 <= out.duration <= 240 and out.language in LANGUAGES and out.caption


def test_understand_mode_free_text_has_no_codes(lm, vocab, prompt):
    rows = _metadata_rows(vocab, prompt, [3], ending="text", include_genres=True, skip_language=True)
    res = decode(lm.backend, rows, SamplingParams(), eos_id=lm.eos_id, pad_id=lm.pad_id, max_new_tokens=160)[
        0
    ]
    text = lm.tokenizer.decode(res.tokens)
    head, _, tail = text.partition(THINK_END)
    assert tail and "\ngenres:" in head and "\nlanguage:" not in head
    assert not any(lm.codes.is_code(t) for t in res.tokens)


@pytest.mark.parametrize("duration", [2.0, 7.3, 12.9])
@pytest.mark.parametrize("restricted", [False, True])
def test_code_count_equals_duration_times_five(lm, prompt, duration, restricted):
    target = int(duration * 5)
    head = lm.codes.head_rows() if restricted else None
    columns = head_columns(head, lm.backend.vocab_size)
    rows = [
        DecodeRow(
            prompt,
            uncond_prompt=prompt[:5],
            constraint=CodeConstraint(_code_range(lm), lm.eos_id, target, columns=columns),
            generator=torch.Generator().manual_seed(s),
        )
        for s in range(2)
    ]
    params = SamplingParams(cfg_scale=2.0)
    out = decode(
        lm.backend, rows, params, eos_id=lm.eos_id, pad_id=lm.pad_id, max_new_tokens=target + 10, head=head
    )
    for res in out:
        assert res.eos and len(res.tokens) == target
        assert all(t in _code_range(lm) for t in res.tokens)


def test_code_constraints_are_per_row(lm, prompt):
    """Upstream advances one shared processor with item 0's token; here each row counts its own."""
    rows = [
        DecodeRow(
            prompt,
            constraint=CodeConstraint(_code_range(lm), lm.eos_id, n, vocab_size=lm.backend.vocab_size),
            generator=torch.Generator().manual_seed(n),
        )
        for n in (2, 6)
    ]
    out = decode(lm.backend, rows, SamplingParams(), eos_id=lm.eos_id, pad_id=lm.pad_id, max_new_tokens=20)
    assert [len(r.tokens) for r in out] == [2, 6] and all(r.eos for r in out)


def test_code_constraint_masks():
    cols = torch.tensor([10, 11, 12, 3])  # codes 10..12 then EOS 3, as a restricted head
    c = CodeConstraint(range(10, 13), 3, 2, columns=cols)
    assert c.allowed().tolist() == [True, True, True, False]
    with pytest.raises(SongstepError):
        c.advance(3)
    c.advance(10)
    c.advance(12)
    assert c.allowed().tolist() == [False, False, False, True]
    with pytest.raises(SongstepError):
        c.advance(11)
    c.advance(3)
    assert c.finished
    free = CodeConstraint(range(10, 13), 3, None, vocab_size=14)
    assert free.allowed().nonzero().flatten().tolist() == [3, 10, 11, 12]
    assert torch.isinf(free.mask(torch.zeros(14))).sum() == 10


# --- the metadata grammar under random logits (hypothesis) -------------------------------------

_USER = st.fixed_dictionaries(
    {},
    optional={
        "bpm": st.integers(30, 300),
        "duration": st.integers(10, 600),
        "keyscale": st.sampled_from(KEYSCALES),
        "language": st.sampled_from(LANGUAGES),
        "timesignature": st.sampled_from(["2", "3", "4", "6", "4/4"]),
        "caption": st.sampled_from(["Lo-fi beat, soft keys", "Épico coral ♯"]),
    },
)


def _run_constraint(lm, constraint, seed, scale, newline_bias):
    """Drive a constraint with random logits until it stops; return the decoded text."""
    gen = torch.Generator().manual_seed(seed)
    newline = lm.encode("\n")[0]
    for _ in range(400):
        if constraint.finished:
            break
        logits = torch.randn(lm.backend.vocab_size, generator=gen) * scale
        logits[newline] += newline_bias
        masked = constraint.mask(logits)
        if constraint.greedy:
            token = int(masked.argmax())
        else:
            token = int(torch.multinomial(torch.softmax(masked, -1), 1, generator=gen))
        constraint.advance(token)
    assert constraint.finished
    return constraint.text()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([0.1, 3.0, 30.0]),
    newline_bias=st.sampled_from([0.0, 12.0]),
    user=_USER,
    skip_caption=st.booleans(),
    skip_language=st.booleans(),
    include_genres=st.booleans(),
    max_duration=st.sampled_from([60, 240, 600]),
)
def test_constrained_block_always_parses_within_range(
    lm, vocab, seed, scale, newline_bias, user, skip_caption, skip_language, include_genres, max_duration
):
    spec = MetadataSpec(
        user_values=user,
        skip_caption=skip_caption,
        skip_language=skip_language,
        include_genres=include_genres,
        max_duration=max_duration,
        caption_max_tokens=24,
        genres_max_tokens=8,
    )
    text = _run_constraint(lm, MetadataConstraint(vocab, spec), seed, scale, newline_bias)
    out = parse_lm_output(text)
    keys = [line.split(":")[0] for line in text.split("\n")[1:] if line and not line.startswith(" ")]
    assert keys == list(spec.fields())
    assert text.startswith("<think>\n") and text.endswith("\n") and THINK_END not in text
    assert 30 <= out.bpm <= 300 or out.bpm == user.get("bpm")
    assert 10 <= out.duration <= max(max_duration, user.get("duration", 0))
    assert out.keyscale in KEYSCALES and out.timesignature in ("2", "3", "4", "6")
    assert skip_language or out.language in LANGUAGES
    for key, value in user.items():  # user values always win
        if key in spec.fields():
            want = {"4/4": "4"}.get(value, value)
            assert getattr(out, key) == want, key


def test_forced_text_uses_single_tokens_and_greedy_language(lm, vocab):
    spec = MetadataSpec(
        user_values={
            "caption": "Soft piano",
            "bpm": 90,
            "duration": 30,
            "keyscale": "C major",
            "timesignature": 4,
        }
    )
    constraint = MetadataConstraint(vocab, spec)
    seen_greedy = []
    gen = torch.Generator().manual_seed(0)
    while not constraint.finished:
        allowed = constraint.allowed()
        if constraint.greedy:
            seen_greedy.append(int(allowed.sum()))
            logits = torch.randn(lm.backend.vocab_size, generator=gen)
            token = int(logits.masked_fill(~allowed, float("-inf")).argmax())
        else:
            assert int(allowed.sum()) == 1 or "language" in constraint.text().split("\n")[-1]
            token = int(torch.multinomial(allowed.float(), 1, generator=gen))
        constraint.advance(token)
    assert seen_greedy and seen_greedy[0] > 1
    assert constraint.text().startswith(
        "<think>\nbpm: 90\ncaption: Soft piano\nduration: 30\nkeyscale: C major\n"
    )


def test_user_values_must_be_one_line():
    with pytest.raises(InvalidRequest):
        metadata_lark(MetadataSpec(user_values={"caption": "two\nlines"}), 1, 2)
    with pytest.raises(InvalidRequest):
        metadata_lark(MetadataSpec(max_duration=5), 1, 2)


def test_think_end_ending(lm, vocab):
    text = _run_constraint(
        lm,
        MetadataConstraint(vocab, MetadataSpec(ending="think_end", caption_max_tokens=8)),
        seed=1,
        scale=3.0,
        newline_bias=0.0,
    )
    assert text.endswith("\n" + THINK_END)


def test_model_rows_past_the_tokenizer_are_never_allowed(lm, vocab):
    wide = GrammarVocab.from_tokenizer(lm.tokenizer, len(lm.tokenizer) + 77)
    constraint = MetadataConstraint(wide, MetadataSpec(caption_max_tokens=4))
    gen = torch.Generator().manual_seed(0)
    while not constraint.finished:
        allowed = constraint.allowed()
        assert allowed.shape == (wide.vocab_size,) and not allowed[len(lm.tokenizer) :].any()
        constraint.advance(int(torch.multinomial(allowed.float(), 1, generator=gen)))
    assert parse_lm_output(constraint.text()).timesignature in ("2", "3", "4", "6")


def test_code_targets_and_caps():
    assert target_codes(240) == 1200 and target_codes(7.3) == 36 and target_codes(None) is None
    assert target_codes(-1) is None
    assert code_token_cap(240) == 1210 and code_token_cap(3) == 60 and code_token_cap(900) == 3010
    assert code_token_cap(None) == 4032 and code_token_cap(600, max_model_len=2048) == 1984


class _HostOnly:
    """A CodeConstraint without `schedule`: forces `decode`'s per-token host loop."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        if name == "schedule":
            raise AttributeError(name)
        return getattr(self.inner, name)


@pytest.mark.parametrize(
    "targets, params",
    [
        ((9, 4), SamplingParams(cfg_scale=2.0)),  # the planner's code phase: CFG, one target per row
        ((None, None), SamplingParams()),  # free count: stops at EOS (checked every SYNC_EVERY steps)
        ((None, 5), SamplingParams(top_k=50, top_p=0.8, temperature=1.3)),
        ((6, 6), SamplingParams(temperature=0.0, cfg_scale=1.5)),  # greedy
    ],
)
@pytest.mark.parametrize("restricted", [False, True])
def test_device_loop_gives_the_host_loops_tokens(lm, prompt, monkeypatch, targets, params, restricted):
    """The code phase runs without a host round trip per token; same seeds ⇒ the same tokens,
    EOS flags and final constraint states as the per-token host loop."""
    import songstep.sampling.lm as lm_sampling

    monkeypatch.setattr(lm_sampling, "SYNC_EVERY", 3)
    head = lm.codes.head_rows() if restricted else None
    columns = head_columns(head, lm.backend.vocab_size)
    # a tiny random LM rarely picks EOS by itself: lift it so free rows stop inside the budget
    eos_col = int((columns == lm.eos_id).nonzero())
    original_prefill = lm.backend.prefill

    def run(wrap):
        rows = [
            DecodeRow(
                prompt,
                uncond_prompt=prompt[:5],
                constraint=wrap(CodeConstraint(_code_range(lm), lm.eos_id, n, columns=columns)),
                generator=torch.Generator().manual_seed(40 + i),
            )
            for i, n in enumerate(targets)
        ]
        out = decode(lm.backend, rows, params, eos_id=lm.eos_id, pad_id=lm.pad_id, max_new_tokens=40, head=head)
        return [(r.tokens, r.eos) for r in out], [(row.constraint.count, row.constraint.finished) for row in rows]

    def boosted_prefill(*args, **kwargs):
        session, logits = original_prefill(*args, **kwargs)
        step = session.step

        class Boosted:
            def step(self, tokens):
                out = step(tokens).clone()
                out[:, eos_col] += 4.0
                return out

        logits = logits.clone()
        logits[:, eos_col] += 4.0
        return Boosted(), logits

    monkeypatch.setattr(lm.backend, "prefill", boosted_prefill)
    calls = []
    real = lm_sampling._decode_on_device
    monkeypatch.setattr(lm_sampling, "_decode_on_device", lambda *a: calls.append(1) or real(*a))
    device_loop = run(lambda c: c)
    assert calls == [1]
    host_loop = run(_HostOnly)
    assert calls == [1]
    assert device_loop == host_loop
    for (tokens, eos), n in zip(device_loop[0], targets):
        if n is not None:
            assert eos and len(tokens) == n
    assert any(eos for (_, eos), n in zip(device_loop[0], targets) if n is None) or None not in targets


@pytest.mark.parametrize("code_phase", [False, True])
def test_progress_reports_tokens(lm, vocab, prompt, monkeypatch, code_phase):
    """Every PROGRESS_EVERY steps and once at the end (done == total), in both loops."""
    import songstep.sampling.lm_steps as lm_steps

    monkeypatch.setattr(lm_steps, "PROGRESS_EVERY", 4)  # what both decode loops' Reporter reads
    if code_phase:
        rows = [DecodeRow(prompt, prompt[:5], CodeConstraint(_code_range(lm), lm.eos_id, 10,
                                                             vocab_size=lm.backend.vocab_size),
                          torch.Generator().manual_seed(0))]
        params, cap = SamplingParams(cfg_scale=2.0), 50
    else:
        rows = _metadata_rows(vocab, prompt, [0])
        params, cap = SamplingParams(), 200
    seen = []
    out = decode(lm.backend, rows, params, eos_id=lm.eos_id, pad_id=lm.pad_id, max_new_tokens=cap,
                 progress=lambda done, total: seen.append((done, total)))
    steps = len(out[0].tokens) + 1
    total = 11 if code_phase else cap  # the code target (+ EOS) is known up front
    assert seen[-1] == (total, total) and all(t == total for _, t in seen)
    assert [d for d, _ in seen[:-1]] == list(range(4, steps, 4))
