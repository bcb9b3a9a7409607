"""A tiny random 5 Hz planner LM folder in the official layout, built offline in well under a second.

`write_tiny_lm(dir)` writes what `acestep-5Hz-lm-*` folders hold: `config.json` +
`model.safetensors` of a `Qwen3ForCausalLM`, and a fast tokenizer (`tokenizer.json`,
`tokenizer_config.json` with a Qwen3-style chat template). Vocabulary layout as in the real LMs
: a byte-level BPE base vocabulary, then `<|endoftext|>`, `<|im_start|>`,
`<|im_end|>`, `<think>`, `</think>`, then the audio-code tokens `<|audio_code_0|>` … with
consecutive ids. EOS is `<|im_end|>`, the pad token `<|endoftext|>`.

`n_codes` defaults to the real 65 535. Measured on 2 CPU cores: writing takes ~0.3 s and
`AutoTokenizer.from_pretrained` ~2 s with all 65 535 codes (transformers walks every added
token); pass a smaller `n_codes` (e.g. 1024) where load time matters more than the layout. Only
codes below `min(n_codes, AUDIO_CODE_COUNT)` are valid.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from songstep.constants import (
    AUDIO_CODE_TOKEN,
    ENDOFTEXT,
    KEYSCALES,
    LANGUAGES,
    THINK_END,
    THINK_START,
)

logger = logging.getLogger(__name__)

REAL_CODE_TOKENS = 65_535  # <|audio_code_0|> … <|audio_code_65534|> in the official LMs
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)  # special in Qwen3
THINK_TOKENS = (THINK_START, THINK_END)  # added, not special, in Qwen3
BASE_VOCAB_SIZE = 640

# Qwen3 chat-template semantics without tools: `<|im_start|>{role}\n{content}<|im_end|>\n`;
# assistant turns after the last user turn split `<think>…</think>` into the reasoning block
# `<think>\n{reasoning}\n</think>\n\n{content}`; generation prompt `<|im_start|>assistant\n`
# (plus an empty think block when enable_thinking is false).
QWEN3_CHAT_TEMPLATE = (
    "{%- set ns = namespace(last_query_index=messages|length - 1) %}"
    "{%- for message in messages %}{%- if message.role == 'user' %}"
    "{%- set ns.last_query_index = loop.index0 %}{%- endif %}{%- endfor %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}"
    "{%- set content = message.content %}{%- set reasoning_content = '' %}"
    "{%- if message.reasoning_content is defined and message.reasoning_content is not none %}"
    "{%- set reasoning_content = message.reasoning_content %}"
    "{%- elif '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index and (loop.last or reasoning_content) %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n'"
    " + content.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>assistant\\n' + content }}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)

_CORPUS_WORDS = (
    "bpm caption duration genres keyscale language timesignature instrumental lyrics Lyric Caption "
    "Instruction Generate audio semantic tokens based on the given conditions Format Expand the user's "
    "input into a more detailed and specific musical description Understand upbeat synth pop track with "
    "bright analog pads punchy drums and catchy female male vocal hook guitar piano bass rock jazz "
    "ambient electronic dance slow fast melancholic energetic warm soft loud chorus verse bridge intro "
    "outro NO USER INPUT true false"
)


def _corpus() -> list[str]:
    lines = [_CORPUS_WORDS, " ".join(KEYSCALES), " ".join(LANGUAGES)]
    lines += [f"bpm: {v}\nduration: {v}\ntimesignature: {v % 7}\n" for v in range(0, 400, 7)]
    lines += [f"keyscale: {k}\nlanguage: {lang}\n" for k, lang in zip(KEYSCALES, LANGUAGES * 2)]
    return lines


def build_tiny_tokenizer(n_codes: int = REAL_CODE_TOKENS) -> Tokenizer:
    """Byte-level BPE (GPT-2/Qwen style) trained on a fixed CoT-like corpus, plus the specials
    and `n_codes` audio-code tokens (consecutive ids after the base vocabulary)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BASE_VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    codes = [AddedToken(AUDIO_CODE_TOKEN.format(i), special=False, normalized=False) for i in range(n_codes)]
    tok.add_tokens(codes)
    return tok


def _tokenizer_config(tok: Tokenizer) -> dict:
    specials = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS + THINK_TOKENS}
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 4096,
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
        "bos_token": None,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "chat_template": QWEN3_CHAT_TEMPLATE,
        "added_tokens_decoder": {
            str(i): {
                "content": t,
                "special": t in SPECIAL_TOKENS,
                "normalized": False,
                "lstrip": False,
                "rstrip": False,
                "single_word": False,
            }
            for t, i in specials.items()
        },
    }


def tiny_qwen3_config(vocab_size: int, eos_id: int, pad_id: int, **overrides):
    """A `Qwen3Config` with hidden 32, 2 layers, 4 query / 2 KV heads (tied embeddings as in the
    0.6B/1.7B/4B bases)."""
    from transformers import Qwen3Config

    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=4096,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bos_token_id=None,
        architectures=["Qwen3ForCausalLM"],
    )
    kwargs.update(overrides)
    return Qwen3Config(**kwargs)


def _random_model(config, seed: int, init_std: float):
    from transformers import Qwen3ForCausalLM

    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, param in model.state_dict().items():
        if name.endswith("norm.weight"):
            state[name] = torch.ones(param.shape)
        else:
            state[name] = torch.randn(param.shape, generator=gen) * init_std
    model.load_state_dict(state, assign=True)
    model.tie_weights()
    return model.eval()


def write_tiny_lm(
    directory: str | Path,
    seed: int = 0,
    *,
    n_codes: int = REAL_CODE_TOKENS,
    init_std: float = 0.5,
    **config_overrides,
) -> Path:
    """Write a tiny random planner LM folder to `directory` and return its path.

    Deterministic for a given `seed` (weights drawn from a private `torch.Generator`; no global
    seeding). `init_std` is large enough that logits are far from uniform, so sampling tests
    exercise the filters. `config_overrides` go to `Qwen3Config` (e.g. `num_hidden_layers=1`).
    """
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tiny_tokenizer(n_codes)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(tok), indent=2))
    eos_id, pad_id = tok.token_to_id(IM_END), tok.token_to_id(ENDOFTEXT)
    config = tiny_qwen3_config(tok.get_vocab_size(with_added_tokens=True), eos_id, pad_id, **config_overrides)
    model = _random_model(config, seed, init_std)
    config.save_pretrained(out)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "generation_config.json").write_text(
        json.dumps({"eos_token_id": eos_id, "pad_token_id": pad_id, "do_sample": True}, indent=2)
    )
    logger.debug("wrote tiny LM to %s (vocab %d, %d codes)", out, config.vocab_size, n_codes)
    return out
