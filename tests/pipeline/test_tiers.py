"""GPU tiers from free memory."""

import pytest

from songstep.pipeline.tiers import CPU_TIER, GIB, detect_tier, tier_by_name, tier_for_memory


@pytest.mark.parametrize(
    "gib,name,lm,offload,batch",
    [(4, "≤6 GB", None, True, 1), (6, "≤6 GB", None, True, 1), (8, "6–12 GB", "0.6B", True, 2),
     (14, "12–16 GB", "1.7B", False, 4), (40, "16+ GB", "4B", False, 8)],
)
def test_tier_for_memory(gib, name, lm, offload, batch) -> None:
    tier = tier_for_memory(int(gib * GIB))
    assert (tier.name, tier.lm, tier.offload, tier.max_batch) == (name, lm, offload, batch)


def test_cpu_and_names() -> None:
    assert detect_tier("cpu") is CPU_TIER
    assert tier_by_name("16+ GB").max_batch == 8
    with pytest.raises(ValueError, match="unknown tier"):
        tier_by_name("tiny")
