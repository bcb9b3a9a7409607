"""songstep.models.text on the tiny Qwen3 text encoder."""

from __future__ import annotations

import pytest
import torch

from songstep.constants import CAPTION_MAX_TOKENS, ENDOFTEXT, TEXT_PAD_ID
from songstep.errors import CheckpointError, InvalidRequest, ModelNotFound
from songstep.models.text import TextEncoder
from songstep.testing.tiny_components import write_tiny_text_encoder

CAPTION = (
    "# Instruction\nFill the audio semantic mask based on the given conditions:\n\n"
    "# Caption\n{caption}\n\n# Metas\n- bpm: 120\n- timesignature: 4\n- keyscale: C major\n"
    "- duration: 30 seconds\n<|endoftext|>\n"
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_text_encoder(tmp_path_factory.mktemp("ckpt") / "Qwen3-Embedding-0.6B", seed=9)


@pytest.fixture(scope="module")
def enc(folder) -> TextEncoder:
    return TextEncoder.from_pretrained(folder, "cpu", torch.float32)


def test_loads_with_the_tokenizers_pad_id(enc):
    eos = enc.tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    assert enc.pad_id == enc.tokenizer.pad_token_id == eos
    assert enc.hidden_size == 32


def test_tokenizer_appends_eos_and_parses_special_tokens(enc):
    eos = enc.pad_id
    im_start = enc.tokenizer.convert_tokens_to_ids("<|im_start|>")
    ids = enc.token_ids("hello<|im_start|>world<|endoftext|>", 256)
    assert ids[-2:] == [eos, eos]  # the prompt's own EOS, then the appended one
    assert im_start in ids
    assert "<" not in enc.tokenizer.convert_ids_to_tokens(ids)
    assert enc.token_ids("", 256) == [eos]


def test_caption_batch_masks_and_padding(enc):
    prompts = [CAPTION.format(caption="pop"), "x", CAPTION.format(caption="a long caption " * 5)]
    lengths = [len(enc.token_ids(p, CAPTION_MAX_TOKENS)) for p in prompts]
    hidden, mask = enc.encode_captions(prompts)
    ids, ids_mask = enc.tokenize(prompts, CAPTION_MAX_TOKENS)
    longest = max(lengths)
    assert hidden.shape == (3, longest, 32) and hidden.dtype == torch.float32
    assert mask.dtype == torch.bool and torch.equal(mask, ids_mask)
    assert mask.sum(dim=1).tolist() == lengths
    for i, n in enumerate(lengths):
        assert mask[i, :n].all() and not mask[i, n:].any()
        assert (ids[i, n:] == enc.pad_id).all()


def test_caption_hidden_is_the_full_models_last_hidden_state(enc):
    """Input ids only; right padding does not change the real positions (causal attention)."""
    prompts = [CAPTION.format(caption="short"), CAPTION.format(caption="much longer caption " * 4)]
    hidden, mask = enc.encode_captions(prompts)
    ids, _ = enc.tokenize(prompts, CAPTION_MAX_TOKENS)
    with torch.no_grad():
        direct = enc.model(input_ids=ids).last_hidden_state
    assert torch.equal(hidden, direct)
    alone, _ = enc.encode_captions(prompts[:1])
    n = int(mask[0].sum())
    assert (hidden[0, :n] - alone[0]).abs().max().item() <= 1e-5
    assert hidden.std() > 0.5  # after the final RMSNorm, not raw embeddings


def test_long_caption_truncates_to_256_keeping_the_appended_eos(enc, caplog):
    prompt = CAPTION.format(caption=" ".join(f"w{i}" for i in range(300)))
    full = enc.token_ids(prompt, 10**6)
    assert len(full) > 300
    with caplog.at_level("WARNING"):
        ids, mask = enc.tokenize([prompt], CAPTION_MAX_TOKENS)
    cut = [r.getMessage() for r in caplog.records if "cut to the model's 256-token limit" in r.getMessage()]
    assert cut == [f"a text prompt of {len(full)} tokens is cut to the model's 256-token limit "
                   f"({len(full) - 256} tokens dropped)"]
    assert ids.shape == (1, 256) and mask.all()
    assert ids[0, -1].item() == enc.pad_id
    assert ids[0, :255].tolist() == full[:255]  # 255 prompt ids + the appended EOS
    hidden, _ = enc.encode_captions([prompt])
    assert hidden.shape == (1, 256, 32)


def test_lyrics_are_embedding_rows_only(enc):
    prompts = ["# Languages\nen\n\n# Lyric\n[Verse]\nla la la<|endoftext|>", "# Languages\nunknown"]
    embeddings, mask = enc.embed_lyrics(prompts)
    ids, ids_mask = enc.tokenize(prompts, 2048)
    table = enc.model.get_input_embeddings().weight
    assert torch.equal(mask, ids_mask)
    assert torch.equal(embeddings, table[ids])
    long = "la " * 3000
    embeddings, mask = enc.embed_lyrics([long])
    assert embeddings.shape == (1, 2048, 32)
    assert enc.tokenize([long], 2048)[0][0, -1].item() == enc.pad_id


def test_invalid_inputs(enc, tmp_path):
    for bad in ([], "a string", [1, 2]):
        with pytest.raises(InvalidRequest):
            enc.encode_captions(bad)
    with pytest.raises(ModelNotFound):
        TextEncoder.from_pretrained(tmp_path / "missing")


def test_pad_id_falls_back_to_the_qwen_constant(folder):
    """Without a pad token the real id 151643 is used; it cannot index the tiny table."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = None
    with pytest.raises(CheckpointError, match=str(TEXT_PAD_ID)):
        TextEncoder(AutoModel.from_pretrained(folder), tokenizer)
