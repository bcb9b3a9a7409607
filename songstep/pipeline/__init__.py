"""The end-to-end pipeline: `Pipeline.from_pretrained(...)` and its task methods."""

from songstep.pipeline.core import GenerationResult, Pipeline

__all__ = ["GenerationResult", "Pipeline"]
