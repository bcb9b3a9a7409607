"""Planner LM adapter: loading, code-token range, batched/padded forwards, head restriction."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from songstep.constants import AUDIO_CODE_COUNT, AUDIO_CODE_TOKEN
from songstep.errors import CheckpointError, ModelNotFound, SongstepError
from songstep.models.lm import (
    AudioCodeVocab,
    MissingExtra,
    find_audio_codes,
    head_columns,
    load_lm,
    pad_left,
)
from songstep.testing.tiny_lm import REAL_CODE_TOKENS, write_tiny_lm


@pytest.fixture(scope="module")
def prompts(lm):
    short = lm.encode("<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n")
    long = lm.encode(
        "<|im_start|>user\nNO USER INPUT and a much longer text<|im_end|>\n<|im_start|>assistant\n"
    )
    assert len(short) < len(long)
    return short, long


def test_load_finds_code_range(lm):
    assert lm.model.dtype == torch.float32
    assert lm.codes.count == REAL_CODE_TOKENS and lm.codes.valid == AUDIO_CODE_COUNT
    assert lm.tokenizer.convert_ids_to_tokens(lm.codes.token_id(63999)) == AUDIO_CODE_TOKEN.format(63999)
    assert lm.eos_id == lm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert lm.pad_id == lm.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert lm.codes.head_rows() == (
        (lm.codes.first_id, lm.codes.first_id + 64000),
        (lm.eos_id, lm.eos_id + 1),
    )


class _FakeTokenizer:
    def __init__(self, vocab, eos=1):
        self._vocab, self.eos_token_id = vocab, eos

    def get_vocab(self):
        return self._vocab


def test_find_audio_codes_checks_consecutive_ids():
    good = {AUDIO_CODE_TOKEN.format(i): 10 + i for i in range(5)}
    assert find_audio_codes(_FakeTokenizer(good)) == AudioCodeVocab(first_id=10, count=5, eos_id=1)
    with pytest.raises(CheckpointError, match="consecutive"):
        find_audio_codes(_FakeTokenizer({**good, AUDIO_CODE_TOKEN.format(3): 99}))
    with pytest.raises(CheckpointError):
        find_audio_codes(_FakeTokenizer({**good, AUDIO_CODE_TOKEN.format(7): 17}))  # gap
    with pytest.raises(CheckpointError, match="no"):
        find_audio_codes(_FakeTokenizer({"a": 0}))


def test_load_errors(tmp_path):
    with pytest.raises(ModelNotFound):
        load_lm(tmp_path / "missing")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm installed")
def test_vllm_backend_without_extra_is_a_clear_import_error(tmp_path):
    folder = write_tiny_lm(tmp_path, n_codes=4)
    with pytest.raises(ImportError, match=r"songstep\[vllm\]") as info:
        load_lm(folder, backend="vllm")
    assert isinstance(info.value, MissingExtra)


def test_pad_left():
    ids, mask = pad_left([[5, 6], [7, 8, 9]], pad_id=0)
    assert ids.tolist() == [[0, 5, 6], [7, 8, 9]]
    assert mask.tolist() == [[0, 1, 1], [1, 1, 1]]


def _run(backend, prompts, pad_id, tokens=None, steps=3, head=None):
    """Logits of a prefill and `steps` decode steps (argmax columns as tokens unless given)."""
    session, logits = backend.prefill(*pad_left(prompts, pad_id), max_new_tokens=steps + 1, head=head)
    out, fed = [logits], []
    for step in range(steps):
        feed = logits.argmax(-1) if tokens is None else tokens[step]
        fed.append(feed)
        logits = session.step(feed)
        out.append(logits)
    return out, fed


@pytest.mark.parametrize("static", [False, True])
def test_left_padded_batch_matches_single_rows(lm, prompts, static):
    """CFG rows share one forward: left padding + mask + shifted positions change nothing."""
    backend = lm.backend
    backend.static_cache = static
    try:
        batch, fed = _run(backend, list(prompts), lm.pad_id)
        for row, prompt in enumerate(prompts):
            single, _ = _run(backend, [prompt], lm.pad_id, tokens=[t[row : row + 1] for t in fed])
            for got, want in zip(batch, single):
                torch.testing.assert_close(got[row], want[0], atol=1e-4, rtol=1e-4)
    finally:
        backend.static_cache = False


def test_static_session_is_invalidated_by_next_prefill(lm, prompts):
    lm.backend.static_cache = True
    try:
        first, logits = lm.backend.prefill(*pad_left([prompts[0]], lm.pad_id), max_new_tokens=2)
        lm.backend.prefill(*pad_left([prompts[1]], lm.pad_id), max_new_tokens=2)
        with pytest.raises(SongstepError, match="reused"):
            first.step(logits.argmax(-1))
    finally:
        lm.backend.static_cache = False


def test_restricted_head_equals_full_head_on_its_rows(lm, prompts):
    ids, mask = pad_left(list(prompts), lm.pad_id)
    head = lm.codes.head_rows()
    full_session, full = lm.backend.prefill(ids, mask, max_new_tokens=2)
    code_session, codes = lm.backend.prefill(ids, mask, max_new_tokens=2, head=head)
    columns = head_columns(head, lm.backend.vocab_size)
    assert codes.shape == (2, AUDIO_CODE_COUNT + 1) and columns[-1] == lm.eos_id
    torch.testing.assert_close(codes, full[:, columns], atol=1e-5, rtol=1e-5)
    tokens = columns[codes.argmax(-1)]
    torch.testing.assert_close(
        code_session.step(tokens), full_session.step(tokens)[:, columns], atol=1e-5, rtol=1e-5
    )


def test_teacher_forced_logits_match_prefill(lm, prompts):
    ids = torch.tensor([prompts[0]])
    _, last = lm.backend.prefill(ids, torch.ones_like(ids), max_new_tokens=1)
    full = lm.backend.logits(ids)
    assert full.shape == (1, len(prompts[0]), lm.backend.vocab_size)
    torch.testing.assert_close(full[0, -1], last[0], atol=1e-5, rtol=1e-5)


def test_target_stats_of_the_stepwise_backend(lm, prompts):
    """`target_stats` (the part of the protocol every backend has) from the teacher-forced logits:
    log-softmax at each target and its rank among the full vocabulary."""
    ids, start = list(prompts[0]), 3
    log_probs, ranks = lm.backend.target_stats(ids, start)
    full = torch.log_softmax(lm.backend.logits(torch.tensor([ids]))[0].float(), -1)
    for k, pos in enumerate(range(start, len(ids))):
        row = full[pos - 1]
        assert log_probs[k].item() == pytest.approx(row[ids[pos]].item(), abs=1e-5)
        assert ranks[k].item() == int((row > row[ids[pos]]).sum()) + 1
    assert lm.backend.capabilities.step_wise and lm.backend.capabilities.full_logits
    with pytest.raises(SongstepError, match="outside"):
        lm.backend.target_stats(ids, 0)
