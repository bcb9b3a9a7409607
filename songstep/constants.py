"""Fixed facts of ACE-Step 1.5: audio rates, limits, vocabularies."""

from __future__ import annotations

SAMPLE_RATE = 48_000
AUDIO_CHANNELS = 2
HOP_LENGTH = 1920  # samples per latent frame
LATENT_RATE = SAMPLE_RATE // HOP_LENGTH  # 25 Hz
LATENT_CHANNELS = 64
POOL_WINDOW = 5  # latent frames per audio code
CODE_RATE = LATENT_RATE // POOL_WINDOW  # 5 Hz
MIN_LATENT_FRAMES = 128  # batch length floor (5.12 s)
SILENCE_LATENT_FRAMES = 15_000
TIMBRE_FIX_FRAMES = 750  # 30 s reference slice

MIN_DURATION = 10.0
MAX_DURATION = 600.0
MIN_BPM = 30
MAX_BPM = 300
MAX_BATCH = 8
TIME_SIGNATURES = ("2", "3", "4", "6")

# Step limits per variant family (issue 4 acceptance): turbo 20, others 200.
MAX_TURBO_STEPS = 20
MAX_CFG_STEPS = 200

CAPTION_MAX_TOKENS = 256
LYRICS_MAX_TOKENS = 2048
TEXT_PAD_ID = 151643  # <|endoftext|> of the Qwen3 tokenizers
ENDOFTEXT = "<|endoftext|>"

LANGUAGES = (
    "ar az bg bn ca cs da de el en es fa fi fr he hi hr ht hu id is it ja ko la lt ms ne nl no "
    "pa pl pt ro ru sa sk sr sv sw ta te th tl tr uk ur vi yue zh unknown"
).split()

_NOTES = "ABCDEFG"
_ACCIDENTALS = ("", "#", "b", "♯", "♭")
KEYSCALES = tuple(f"{n}{a} {m}" for n in _NOTES for a in _ACCIDENTALS for m in ("major", "minor"))

TRACK_NAMES = (
    "woodwinds",
    "brass",
    "fx",
    "synth",
    "strings",
    "percussion",
    "keyboard",
    "guitar",
    "bass",
    "drums",
    "backing_vocals",
    "vocals",
)

# LM planner
AUDIO_CODE_COUNT = 64_000  # valid FSQ codes 8*8*8*5*5*5
AUDIO_CODE_TOKEN = "<|audio_code_{}|>"
THINK_START = "<think>"
THINK_END = "</think>"
DEFAULT_NEGATIVE_PROMPT = "NO USER INPUT"
