"""Tiny random non-DiT components in the official on-disk layout (principle 10).

Each writer produces, in well under a second and from a seed alone, a folder that the real
loaders read exactly as they read the hub's folders:

* `write_tiny_vae(dir, seed)` -> `vae/`: diffusers `config.json` +
  `diffusion_pytorch_model.safetensors` of an `AutoencoderOobleck` with the official
  downsampling ratios (hop 1920), 64 latent channels and 2 audio channels at 48 kHz, but
  narrow decoder widths. The encoder cannot be narrower than 128 channels (its first and last
  width are both `encoder_hidden_size` = 2 x latent channels), so encoding costs about
  0.4 M multiply-adds per audio sample: keep test audio short (about a second or less).
* `write_tiny_text_encoder(dir, seed, hidden_size=32)` -> `Qwen3-Embedding-0.6B/`: a tiny
  `Qwen3Model` plus a byte-level BPE tokenizer trained on a fixed corpus, with the Qwen3
  special tokens and the post-processor that appends `<|endoftext|>` to every string (as the
  official tokenizer does). Its ids are small, so `<|endoftext|>` is not 151643: code must read the
  pad id from the tokenizer (`TextEncoder.pad_id`), which falls back to TEXT_PAD_ID only when
  the tokenizer has no pad token.
* `write_silence_latent(path, seed, frames)` -> `silence_latent.pt` as upstream stores it.

Random weights come from `torch.random.fork_rng` + a seed, so the global RNG state is left as
it was and the same seed always writes the same files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from songstep.constants import (
    AUDIO_CHANNELS,
    ENDOFTEXT,
    LATENT_CHANNELS,
    SAMPLE_RATE,
    SILENCE_LATENT_FRAMES,
)
from songstep.errors import InvalidRequest

logger = logging.getLogger(__name__)

TINY_DOWNSAMPLING_RATIOS = (2, 4, 4, 6, 10)  # the official ratios, product 1920
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)  # same order as Qwen3 (151643, 151644, 151645)
SILENCE_FILE = "silence_latent.pt"

# Qwen2/3 pre-tokenizer split (the public regex of the Qwen tokenizers).
_QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TOKENIZER_VOCAB = 512
_CORPUS = (
    "# Instruction\nFill the audio semantic mask based on the given conditions:\n\n"
    "# Caption\nAn upbeat pop song with bright synths, punchy drums and a catchy female vocal.\n\n"
    "# Metas\n- bpm: 120\n- timesignature: 4\n- keyscale: C major\n- duration: 30 seconds\n",
    "# Instruction\nGenerate audio semantic tokens based on the given conditions:\n\n"
    "# Caption\nMelancholic piano ballad, soft strings, slow tempo, male voice.\n\n"
    "# Metas\n- bpm: N/A\n- timesignature: N/A\n- keyscale: F# minor\n- duration: 95 seconds\n",
    "# Instruction\nRepaint the mask area based on the given conditions:\n",
    "# Languages\nen\n\n# Lyric\n[Verse 1]\nWalking down the empty street tonight\n"
    "The city lights are shining bright\n\n[Chorus]\nSing it loud, sing it clear\nla la la\n",
    "# Languages\nunknown\n\n# Lyric\n[Instrumental]",
    "Extract the VOCALS track from the audio: Complete the input track with DRUMS | BASS | GUITAR:",
    "The quick brown fox jumps over the lazy dog. 0123456789 ,.;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~",
)


def tiny_oobleck(
    seed: int = 0,
    *,
    latent_channels: int = LATENT_CHANNELS,
    decoder_channels: int = 8,
    downsampling_ratios: tuple[int, ...] = TINY_DOWNSAMPLING_RATIOS,
):
    """A random `AutoencoderOobleck` with unit channel multiples (in memory, not saved).

    `encoder_hidden_size` is fixed to 2 x `latent_channels` (mean + scale); pass a small
    `latent_channels` for a cheap network with the same receptive field (tiling tests).
    """
    from diffusers import AutoencoderOobleck

    ratios = [int(r) for r in downsampling_ratios]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoencoderOobleck(
            encoder_hidden_size=2 * latent_channels,
            downsampling_ratios=ratios,
            channel_multiples=[1] * len(ratios),
            decoder_channels=decoder_channels,
            decoder_input_channels=latent_channels,
            audio_channels=AUDIO_CHANNELS,
            sampling_rate=SAMPLE_RATE,
        )
    return model.eval()


def write_tiny_vae(directory: str | Path, seed: int = 0) -> Path:
    """Write a tiny random `vae/` folder (diffusers layout); returns the folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tiny_oobleck(seed).save_pretrained(directory, safe_serialization=True)
    logger.debug("wrote tiny VAE to %s", directory)
    return directory


def _train_tokenizer():
    """Byte-level BPE with Qwen's pre-tokenizer, trained on the fixed corpus (deterministic)."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from tokenizers.models import BPE

    tok = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_TOKENIZER_VOCAB,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(list(_CORPUS), trainer)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL_TOKENS])
    eos_id = tok.token_to_id(ENDOFTEXT)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A:0 {ENDOFTEXT}:0",
        pair=f"$A:0 {ENDOFTEXT}:0 $B:1 {ENDOFTEXT}:1",
        special_tokens=[(ENDOFTEXT, eos_id)],
    )
    return tok


def _write_tokenizer(directory: Path) -> int:
    """Save the tokenizer; returns its full vocabulary size (special tokens included).

    It is saved through `PreTrainedTokenizerFast`, then `tokenizer_config.json` names
    `Qwen2Tokenizer` like the real folder, so `AutoTokenizer` takes the same code path
    (vocab/merges rebuilt by the class, post-processor taken from tokenizer.json).
    """
    from transformers import PreTrainedTokenizerFast

    backend = _train_tokenizer()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        bos_token=None,
        model_max_length=131072,
    )
    fast.save_pretrained(directory)
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(tokenizer_class="Qwen2Tokenizer", add_prefix_space=False, split_special_tokens=False)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return backend.get_vocab_size(with_added_tokens=True)


def write_tiny_text_encoder(directory: str | Path, seed: int = 0, hidden_size: int = 32) -> Path:
    """Write a tiny `Qwen3-Embedding-0.6B/` folder (model + tokenizer); returns the folder.

    `hidden_size` must equal the tiny DiT's `text_hidden_dim` (32 in `tiny_config()`).
    """
    from transformers import Qwen3Config, Qwen3Model

    if hidden_size % 8:
        raise InvalidRequest(f"hidden_size must be a multiple of 8 (4 heads of hidden/4), got {hidden_size}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab_size = _write_tokenizer(directory)
    eos_id = vocab_size - len(SPECIAL_TOKENS)  # <|endoftext|> is the first added token
    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden_size // 4,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3Model(config).eval()
    model.save_pretrained(directory)
    logger.debug("wrote tiny text encoder to %s", directory)
    return directory


def write_silence_latent(path: str | Path, seed: int = 0, frames: int = SILENCE_LATENT_FRAMES) -> Path:
    """Write `silence_latent.pt` exactly as upstream stores it: a float32 [1, 64, frames]
    tensor saved alone with `torch.save`. `path` is the file, or a folder to write it into.

    Values are seeded normal noise with the real file's statistics (mean -0.21, std 0.96).
    Returns the file path.
    """
    if not 0 < frames <= SILENCE_LATENT_FRAMES:
        raise InvalidRequest(f"frames must be in 1..{SILENCE_LATENT_FRAMES}, got {frames}")
    path = Path(path)
    if path.is_dir():
        path = path / SILENCE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    latent = torch.randn((1, LATENT_CHANNELS, frames), generator=generator) * 0.96 - 0.21
    torch.save(latent.float(), path)
    return path
