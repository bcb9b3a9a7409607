"""The tiny planner LM folder: official layout, offline, fast, deterministic."""

from __future__ import annotations

import pytest
import torch

from songstep.constants import AUDIO_CODE_TOKEN, ENDOFTEXT, THINK_END, THINK_START
from songstep.testing.tiny_lm import IM_END, IM_START, REAL_CODE_TOKENS, write_tiny_lm


@pytest.fixture(scope="module")
def tiny_dir(tiny_lm_dir):
    return tiny_lm_dir


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


def test_folder_layout(tiny_dir):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (tiny_dir / name).is_file(), name


def test_write_is_deterministic(tiny_dir, tmp_path):
    again = write_tiny_lm(tmp_path / "again")  # its speed is the benchmark's business, not a test's
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (again / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    other = write_tiny_lm(tmp_path / "seed1", seed=1)
    assert (other / "model.safetensors").read_bytes() != (tiny_dir / "model.safetensors").read_bytes()


def test_vocabulary_layout(tokenizer):
    vocab = tokenizer.get_vocab()
    specials = [vocab[t] for t in (ENDOFTEXT, IM_START, IM_END, THINK_START, THINK_END)]
    base = specials[0]
    assert specials == list(range(base, base + 5))  # right after the base vocabulary
    first = vocab[AUDIO_CODE_TOKEN.format(0)]
    assert first == base + 5
    assert vocab[AUDIO_CODE_TOKEN.format(REAL_CODE_TOKENS - 1)] == first + REAL_CODE_TOKENS - 1
    assert len(tokenizer) == first + REAL_CODE_TOKENS
    assert tokenizer.eos_token == IM_END and tokenizer.pad_token == ENDOFTEXT


def test_tokenizer_spells_cot_and_codes(tokenizer):
    text = "<think>\nbpm: 120\ncaption: Bright synth-pop, F♯ minor!\nlanguage: yue\n</think>\n\n"
    codes = AUDIO_CODE_TOKEN.format(5) + AUDIO_CODE_TOKEN.format(63999)
    ids = tokenizer.encode(text + codes + IM_END, add_special_tokens=False)
    assert tokenizer.decode(ids) == text + codes + IM_END
    first = tokenizer.convert_tokens_to_ids(AUDIO_CODE_TOKEN.format(0))
    assert ids[-3:] == [first + 5, first + 63999, tokenizer.eos_token_id]


def test_chat_template_is_qwen3_style(tokenizer):
    messages = [{"role": "system", "content": "# Instruction\nX\n\n"}, {"role": "user", "content": "hi"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\n# Instruction\nX\n\n<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    closed = tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": "<think>\nbpm: 1\n</think>"}], tokenize=False
    )
    assert closed.endswith("<|im_start|>assistant\n<think>\nbpm: 1\n</think>\n\n<|im_end|>\n")


def test_model_loads_and_runs(tiny_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert model.config.vocab_size == len(tokenizer)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, len(tokenizer)) and torch.isfinite(logits).all()


def test_smaller_code_count(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(write_tiny_lm(tmp_path, n_codes=16))
    assert (
        tok.convert_tokens_to_ids(AUDIO_CODE_TOKEN.format(15))
        - tok.convert_tokens_to_ids(AUDIO_CODE_TOKEN.format(0))
        == 15
    )
    assert AUDIO_CODE_TOKEN.format(16) not in tok.get_vocab()
