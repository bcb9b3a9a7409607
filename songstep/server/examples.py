"""Presets for `/create_random_sample` (upstream serves its `examples/*.json` the same way)."""

from __future__ import annotations

import random
from typing import Any

SIMPLE_MODE = (
    {"description": "a warm acoustic folk song about coming home after a long winter", "instrumental": False,
     "vocal_language": "en"},
    {"description": "late-night lofi hip hop with dusty vinyl drums and mellow keys", "instrumental": True,
     "vocal_language": "unknown"},
    {"description": "an energetic synthwave track for a night drive through the city", "instrumental": False,
     "vocal_language": "en"},
)

CUSTOM_MODE = (
    {"caption": "upbeat pop with bright synths, punchy drums and a catchy female vocal",
     "lyrics": "[Verse]\nCity lights are calling out my name\n[Chorus]\nWe run, we shine, we never fade",
     "bpm": 120, "key_scale": "C major", "time_signature": "4", "duration": 60, "vocal_language": "en"},
    {"caption": "slow piano ballad, soft strings, intimate male vocal",
     "lyrics": "[Verse]\nQuiet rooms remember you\n[Chorus]\nStay a while, the night is long",
     "bpm": 72, "key_scale": "A minor", "time_signature": "4", "duration": 90, "vocal_language": "en"},
    {"caption": "instrumental jazz trio, brushed drums, walking upright bass, warm piano",
     "lyrics": "[Instrumental]", "bpm": 140, "key_scale": "F major", "time_signature": "4", "duration": 60,
     "vocal_language": "unknown"},
)


def random_example(sample_type: str, rng: random.Random | None = None) -> dict[str, Any]:
    presets = SIMPLE_MODE if sample_type == "simple_mode" else CUSTOM_MODE
    return dict((rng or random).choice(presets))
