"""Scale-out on Ray Serve (the `[serve]` extra): planner and synthesizer deployments with dynamic
batching and GPU-aware replicas (`deployments`), and the REST server's Ray backend (`backend`).
Ray is imported lazily: importing this package needs nothing beyond songstep's core."""

from songstep.serving.config import ServingConfig

__all__ = ["ServingConfig"]
