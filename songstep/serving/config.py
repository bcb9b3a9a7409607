"""How the Ray Serve deployments are shaped: model, replicas, GPUs per replica, batching,
autoscaling bounds, retries. Filled from `songstep serve --backend ray --ray-option KEY=VALUE`
(or a TOML/JSON `--ray-config` file) or built directly in code and tests."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from songstep.errors import InvalidRequest


@dataclass(frozen=True)
class ServingConfig:
    model: str = "ACE-Step/Ace-Step1.5"
    variant: str = "turbo"
    device: str | None = None  # per replica; default cuda when the replica has a GPU
    root: str = "checkpoints"
    offline: bool = False
    lm: str = "none"  # the planner LM's own deployment: "none", "auto", a size or a folder
    # synthesizer pool (text encoder + DiT + VAE: one Pipeline per replica)
    replicas: int = 1
    num_gpus: float = 0.0  # per synthesizer replica; fractional shares a card (0.5: two replicas per GPU)
    num_cpus: float = 1.0
    max_batch: int | None = None  # None: the replica's GPU tier batch limit
    batch_wait_s: float = 0.05  # how long a batch waits to fill
    duration_bucket_s: float = 30.0  # takes whose durations fall in one bucket batch together
    autoscale: tuple[int, int] | None = None  # (min, max) replicas, scaled on queued requests
    target_ongoing: float = 2.0  # autoscaling target: ongoing requests per replica
    # planner pool
    lm_replicas: int = 1
    lm_num_gpus: float = 0.0
    lm_num_cpus: float = 1.0
    # the API side
    concurrency: int = 0  # jobs in flight per API process; 0: replicas (or autoscale max) x batch limit
    max_retries: int = 2  # re-runs of a job on another replica after its replica died
    retry_backoff_s: float = 0.5
    drain_s: float = 60.0  # on shutdown, wait this long for in-flight jobs
    app_name: str = "songstep"
    deploy: bool = True  # False: attach to the application another API replica deployed
    graceful_shutdown_s: float = 60.0  # a replica being stopped finishes its requests first
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.lm_replicas < 1:
            raise InvalidRequest("replicas must be at least 1")
        if self.num_gpus < 0 or self.lm_num_gpus < 0:
            raise InvalidRequest("num_gpus must be >= 0 (fractional values share a GPU)")
        if self.autoscale is not None and not 0 <= self.autoscale[0] <= self.autoscale[1]:
            raise InvalidRequest(f"autoscale must be (min, max) with 0 <= min <= max, got {self.autoscale}")
        if self.max_retries < 0:
            raise InvalidRequest("max_retries must be >= 0")

    @property
    def in_flight(self) -> int:
        """Jobs the API process keeps in flight: enough to fill every replica's batch twice."""
        if self.concurrency:
            return self.concurrency
        replicas = self.autoscale[1] if self.autoscale else self.replicas
        return max(2, 2 * max(replicas, 1) * (self.max_batch or 4))

    def replace(self, **changes: Any) -> ServingConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> ServingConfig:
        """From `key=value` strings or a parsed config file; values are coerced to the field types."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        out: dict[str, Any] = {}
        for key, value in options.items():
            name = key.replace("-", "_")
            if name not in names:
                raise InvalidRequest(f"unknown Ray serving option {key!r}; known: {', '.join(sorted(names))}")
            out[name] = _coerce(name, value)
        return cls(**out)


def _coerce(name: str, value: Any) -> Any:
    if not isinstance(value, str):
        return tuple(value) if isinstance(value, list) else value
    if name == "autoscale":
        low, _, high = value.partition(":")
        return (int(low), int(high or low))
    if name in ("replicas", "lm_replicas", "concurrency", "max_retries", "max_batch"):
        return int(value)
    if name in ("offline", "deploy"):
        return value.lower() in ("1", "true", "yes", "on")
    if name in ("num_gpus", "num_cpus", "lm_num_gpus", "lm_num_cpus", "batch_wait_s", "duration_bucket_s",
                "target_ongoing", "retry_backoff_s", "drain_s", "graceful_shutdown_s"):
        return float(value)
    return value


def read_options(path: str | Path | None, pairs: list[str]) -> dict[str, Any]:
    """Options from a TOML or JSON file, then `key=value` pairs (which win)."""
    options: dict[str, Any] = {}
    if path:
        text = Path(path).read_text(encoding="utf-8")
        if str(path).endswith(".json"):
            options.update(json.loads(text))
        else:
            import tomllib

            options.update(tomllib.loads(text))
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InvalidRequest(f"--ray-option takes KEY=VALUE, got {pair!r}")
        options[key.strip()] = value.strip()
    return options
