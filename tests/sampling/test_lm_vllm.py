"""The vLLM decode glue without vLLM: the row hook's logits processing and request grouping."""

import pytest
import torch

from songstep.errors import SongstepError
from songstep.models.lm_vllm import VLLMBackend, VLLMRequest
from songstep.sampling.grammar import CodeConstraint
from songstep.sampling.lm import DecodeRow, SamplingParams, cfg_combine, filter_logits
from songstep.sampling.lm_vllm import _Steer, row_seed

EOS = 9


def _logits(rows=4, vocab=12, seed=0):
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def test_cfg_pair_gets_the_processed_logits_in_both_rows():
    params = SamplingParams(temperature=0.9, top_k=5, top_p=0.8, cfg_scale=2.5)
    row = DecodeRow([1, 2, 3], [4], CodeConstraint(range(0, 8), EOS, target=3, vocab_size=12))
    steer = _Steer([row], params, EOS)
    logits = _logits()
    raw = logits.clone()
    steer(logits, {"cond:0": (2, []), "uncond:0": (0, [])})
    expected = cfg_combine(raw[2], raw[0], 2.5)
    expected[8:] = float("-inf")  # codes 0..7 only while codes are due
    expected = filter_logits(expected[None], params)[0]
    assert torch.equal(logits[2], expected) and torch.equal(logits[0], expected)
    assert torch.equal(logits[1], raw[1]) and torch.equal(logits[3], raw[3])  # other rows untouched
    kept = torch.isfinite(expected).nonzero().flatten()
    assert 1 <= kept.numel() < 5 and bool((kept < 8).all())  # top-k 5 of the 8 codes, then top-p
    assert not steer.errors and not steer.desync
    steer.raise_if_failed(0, [3], [3])


def test_constraint_follows_the_generated_tokens():
    params = SamplingParams(temperature=1.0, top_p=1.0)
    row = DecodeRow([1], None, CodeConstraint(range(0, 8), EOS, target=2, vocab_size=12))
    steer = _Steer([row], params, EOS)
    logits = _logits(1)
    steer(logits, {"cond:0": (0, [3, 5])})  # two codes done: only EOS is allowed now
    assert row.constraint.count == 2
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [EOS]


def test_repetition_penalty_sees_prompt_and_output():
    params = SamplingParams(temperature=1.0, top_p=1.0, repetition_penalty=1.5)
    steer = _Steer([DecodeRow([1, 2])], params, EOS)
    logits = _logits(1)
    raw = logits.clone()
    steer(logits, {"cond:0": (0, [4, EOS])})
    history = [torch.tensor([1, 2, 4])]
    assert torch.equal(logits[0], filter_logits(raw, params, history)[0])


def test_greedy_constraint_keeps_only_the_argmax():
    class Greedy:
        finished, greedy = False, True

        def allowed(self, device="cpu"):
            return torch.tensor([True] * 6 + [False] * 6)

        def advance(self, token):
            pass

    logits = _logits(1)
    best = int(logits[0, :6].argmax())
    _Steer([DecodeRow([1], None, Greedy())], SamplingParams(temperature=0.8), EOS)(logits, {"cond:0": (0, [])})
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [best]


def test_a_grammar_at_its_end_still_masks_until_eos():
    """llguidance reports `finished` once only EOS can follow; the row must still be masked."""

    class Ended:
        finished, greedy = True, False

        def allowed(self, device="cpu"):
            return torch.arange(12) == EOS

        def advance(self, token):
            pass

    logits = _logits(1)
    _Steer([DecodeRow([1], None, Ended())], SamplingParams(temperature=0.8), EOS)(logits, {"cond:0": (0, [4])})
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [EOS]


@pytest.mark.parametrize(
    "rows",
    [
        {"cond:0": (0, [3])},  # the unconditional row is missing
        {"cond:0": (0, [3]), "uncond:0": (1, [])},  # it is a token behind
        {"cond:0": (0, [3]), "uncond:0": (1, [4])},  # it took another token
        {"uncond:0": (1, [3])},  # the conditional row is missing
    ],
)
def test_cfg_pair_out_of_step_is_stopped_and_reported(rows):
    steer = _Steer([DecodeRow([1], [2])], SamplingParams(cfg_scale=2.0), EOS)
    logits = _logits(2)
    steer(logits, rows)
    assert steer.desync == {0}
    for index, _ in rows.values():
        assert torch.isfinite(logits[index]).nonzero().flatten().tolist() == [EOS]
    with pytest.raises(SongstepError, match="lock-step"):
        steer.raise_if_failed(0, [3], [3])


def test_a_constraint_that_allows_nothing_is_reported_after_the_run():
    class Nothing:
        finished, greedy = False, False

        def allowed(self, device="cpu"):
            return torch.zeros(12, dtype=torch.bool)

        def advance(self, token):
            pass

    steer = _Steer([DecodeRow([1], None, Nothing())], SamplingParams(), EOS)
    logits = _logits(1)
    steer(logits, {"cond:0": (0, [])})
    assert torch.isfinite(logits[0]).any()  # left unmasked (no device sync), so sampling stays finite
    with pytest.raises(SongstepError, match="allows no token"):
        steer.raise_if_failed(0, [], None)


def test_an_error_in_the_hook_stops_the_row_and_is_raised_after():
    row = DecodeRow([1], None, CodeConstraint(range(0, 8), EOS, target=1, vocab_size=12))
    steer = _Steer([row], SamplingParams(), EOS)
    logits = _logits(1)
    steer(logits, {"cond:0": (0, [11])})  # 11 is neither a code nor EOS: the constraint refuses it
    assert isinstance(steer.errors[0], SongstepError)
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [EOS]
    with pytest.raises(SongstepError, match="neither a valid audio code"):
        steer.raise_if_failed(0, [11], None)


def test_row_seed_follows_the_generator():
    a = row_seed(torch.Generator().manual_seed(5))
    assert a == row_seed(torch.Generator().manual_seed(5)) != row_seed(torch.Generator().manual_seed(6))
    assert 0 <= a < 2**31 and row_seed(None) == 0


def _grouping_backend(max_rows=4, max_model_len=100, kv_tokens=400, block=16):
    backend = VLLMBackend.__new__(VLLMBackend)  # no engine: only the grouping arithmetic
    backend.max_rows, backend.max_model_len = max_rows, max_model_len
    backend.max_batched_tokens, backend.kv_tokens, backend.block_size = max_rows * max_model_len, kv_tokens, block
    return backend


def test_hooks_are_per_backend_and_per_call():
    """Row hooks live in each backend's own registry, only while their generate call runs."""
    from songstep.models.lm_vllm import HookRegistry

    a, b = HookRegistry(), HookRegistry()
    seen = []
    with a.active("k", lambda logits, rows: seen.append(rows)):
        assert a.get("k") is not None and b.get("k") is None and len(a) == 1
        with pytest.raises(SongstepError, match="already registered"):
            with a.active("k", lambda logits, rows: None):
                pass
        assert a.get("k") is not None  # the refused registration left the running one alone
    assert a.get("k") is None and len(a) == 0
    assert not hasattr(VLLMBackend, "prefill") and not hasattr(VLLMBackend, "logits")
    assert not VLLMBackend.capabilities.step_wise and not VLLMBackend.capabilities.full_logits


def test_groups_fit_rows_and_kv_cache():
    backend = _grouping_backend()
    pair = [VLLMRequest([1] * 30, [2] * 10, max_tokens=34) for _ in range(3)]
    groups = backend.groups(pair)
    assert [len(g) for g in groups] == [2, 1]  # 2 pairs = 4 rows = max_rows
    tight = _grouping_backend(kv_tokens=160)  # a pair needs 4 + 3 blocks of 16 = 112 tokens
    assert [len(g) for g in tight.groups(pair)] == [1, 1, 1]
    with pytest.raises(SongstepError, match="does not fit"):
        backend.groups([VLLMRequest([1] * 90, max_tokens=20)])
    with pytest.raises(SongstepError, match="max_rows=1"):
        _grouping_backend(max_rows=1).groups([VLLMRequest([1], [2], max_tokens=4)])


def test_catch_up_waits_for_tokens_in_flight():
    row = DecodeRow([1], None, CodeConstraint(range(0, 8), EOS, target=3, vocab_size=12))
    steer = _Steer([row], SamplingParams(), EOS)
    steer.catch_up(0, [2, -1])  # async scheduling: the second token is not known yet
    assert (steer.seen[0], row.constraint.count) == (1, 1)
    steer.catch_up(0, [2, 6])
    assert (steer.seen[0], row.constraint.count) == (2, 2)


def test_a_batch_is_processed_like_the_host_loop_step():
    """Three CFG pairs scattered over the batch, one with a greedy constraint: the hook's logits
    equal `Step.combine` + `Step.mask` + `filter_logits` of the host loop on the same rows."""
    from songstep.sampling.lm import Step

    class Greedy:
        finished, greedy = False, True

        def allowed(self, device="cpu"):
            return torch.arange(12) < 6

        def advance(self, token):
            pass

    params = SamplingParams(temperature=0.7, top_k=4, top_p=0.85, cfg_scale=1.8)
    rows = [
        DecodeRow([1], [2], CodeConstraint(range(0, 8), EOS, target=3, vocab_size=12)),
        DecodeRow([1, 5], [2], Greedy()),
        DecodeRow([3], [2], None),
    ]
    logits = _logits(7, seed=3)
    raw = logits.clone()
    slots = {"cond:0": (4, []), "uncond:0": (1, []), "cond:1": (0, []), "uncond:1": (6, []),
             "cond:2": (2, []), "uncond:2": (5, [])}
    _Steer(rows, params, EOS)(logits, slots)
    step = Step(rows, params, None, EOS)
    x, _ = step.mask(step.combine(torch.cat([raw[[4, 0, 2]], raw[[1, 6, 5]]])), [False] * 3)
    expected = filter_logits(x, params)
    best = int(x[1].argmax())
    expected[1] = torch.where(torch.arange(12) == best, 0.0, float("-inf"))
    assert torch.equal(logits[[4, 0, 2]], expected) and torch.equal(logits[[1, 6, 5]], expected)
    assert torch.equal(logits[3], raw[3])


def test_isolated_rng_keeps_the_global_random_state():
    import random

    import numpy as np

    from songstep.models.lm_vllm import isolated_rng

    def draws():
        return torch.rand(2).tolist(), random.random(), float(np.random.rand())

    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    expected = draws()
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    with isolated_rng():  # what the in-process engine does: reseed everything, draw
        torch.manual_seed(0), random.seed(0), np.random.seed(0)
        draws()
    assert draws() == expected
