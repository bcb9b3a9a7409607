"""GPU tiers: what runs where, picked from free memory and always overridable; the LM duration limit per
tier is the longest song its planner may plan."""

from __future__ import annotations

from dataclasses import dataclass

import torch

GIB = 1024**3


@dataclass(frozen=True)
class Tier:
    name: str
    max_batch: int
    lm: str | None  # planner size loaded by default, None = DiT only
    offload: bool  # keep idle components on the CPU
    max_duration: float  # longest song
    max_duration_lm: float  # longest song the planner may choose


TIERS = (
    Tier("≤6 GB", 1, None, True, 360.0, 180.0),
    Tier("6–12 GB", 2, "0.6B", True, 360.0, 240.0),
    Tier("12–16 GB", 4, "1.7B", False, 360.0, 240.0),
    Tier("16+ GB", 8, "4B", False, 600.0, 600.0),
)
CPU_TIER = Tier("cpu", 8, None, False, 600.0, 600.0)


def tier_for_memory(free_bytes: int) -> Tier:
    gib = free_bytes / GIB
    if gib <= 6:
        return TIERS[0]
    if gib <= 12:
        return TIERS[1]
    if gib <= 16:
        return TIERS[2]
    return TIERS[3]


def detect_tier(device: torch.device | str) -> Tier:
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_TIER
    free, _total = torch.cuda.mem_get_info(device)
    return tier_for_memory(free)


def tier_by_name(name: str) -> Tier:
    for tier in (*TIERS, CPU_TIER):
        if tier.name == name or tier.name.split()[0].replace("≤", "") == name:
            return tier
    raise ValueError(f"unknown tier {name!r}; known: {', '.join(t.name for t in (*TIERS, CPU_TIER))}")
