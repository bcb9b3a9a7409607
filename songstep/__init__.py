"""songstep: ACE-Step 1.5 music generation.

The public entry points are imported lazily so that `import songstep` stays cheap and
has no side effects (no torch import, no environment changes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "Pipeline": "songstep.pipeline",
    "GenerationResult": "songstep.pipeline",
    "Planner": "songstep.planner",
    "GenerationRequest": "songstep.request",
}

if TYPE_CHECKING:  # pragma: no cover
    from songstep.pipeline import GenerationResult, Pipeline
    from songstep.planner import Planner
    from songstep.request import GenerationRequest


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'songstep' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = ["GenerationRequest", "GenerationResult", "Pipeline", "Planner", "__version__"]
