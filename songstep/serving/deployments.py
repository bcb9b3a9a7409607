"""The Ray Serve deployments: `Planner` (the LM, its own pool) and `Synthesizer` (text encoder,
DiT and VAE: one `Pipeline` per replica, built in the replica), composed by a deployment handle
(the synthesizer calls the planner for the jobs that need it).

A job reaches `Synthesizer.generate` as a plain dict `{"fields", "options"}` (the stored job spec)
and comes back as a dict with the audio (numpy), seeds, params and timings, plus the batch it ran
in (`batch_size`, `replica`). Errors a user caused come back as `{"error", "kind"}` so one bad
request never fails the other requests of its batch; a dying replica surfaces as a Ray actor
error at the caller, which retries the job elsewhere (see `backend.RayWorker`).

`@serve.batch` collects the requests that arrive while the replica is busy, up to the batch
limit (the replica's GPU tier unless configured). The batch is split into compatible groups
(same task, same duration bucket, same planner settings) that run back to back through the one
pipeline, so takes that may share a DiT call are adjacent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from types import SimpleNamespace
from typing import Any

from ray import serve

from songstep.errors import SongstepError
from songstep.serving.config import ServingConfig

log = logging.getLogger(__name__)
_DEFAULT_BATCH = 8  # replaced in each replica by its tier's limit (or the configured one)


def batch_key(job: dict[str, Any], bucket_s: float) -> tuple:
    """Jobs with the same key may share a batch: task, duration bucket, thinking and format."""
    fields, options = job.get("fields", {}), job.get("options", {})
    duration = fields.get("duration")
    bucket = int(float(duration) // bucket_s) if duration else -1
    return (fields.get("task", "text2music"), bucket, bool(options.get("thinking")), options.get("audio_format"))


def _error(exc: BaseException) -> dict[str, Any]:
    kind = "user" if isinstance(exc, SongstepError) and 400 <= getattr(exc, "http_status", 500) < 500 else "internal"
    return {"error": f"{type(exc).__name__}: {exc}", "kind": kind}


def _replica_id() -> str:
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # outside a replica (unit use)
        return f"pid-{os.getpid()}"


class Planner:
    """The planner LM alone: sample mode (a description → caption, lyrics, metas) and format mode
    (caption and lyrics rewritten), the steps the API's worker runs before building a request."""

    def __init__(self, config: ServingConfig, lm_max_new_tokens: int | None = None):
        from songstep.pipeline.components import resolve_lm
        from songstep.pipeline.tiers import detect_tier
        from songstep.planner import Planner as LM

        device = config.device or ("cuda" if config.lm_num_gpus > 0 else "cpu")
        tier = detect_tier(device)
        folder = resolve_lm(config.model, config.lm, tier.lm, config.root, config.offline)
        if folder is None:
            raise SongstepError(f"lm={config.lm!r} names no planner LM for this replica")
        self.lm = LM.from_pretrained(folder, device=device, max_duration=tier.max_duration_lm)
        self.max_new_tokens = lm_max_new_tokens

    def name(self) -> str:
        return self.lm.name

    def call(self, method: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        """The planner's `format` or `create_sample` (the server's /format_input and
        /v1/create_sample routes); returns its `SongDescription`."""
        if method not in ("format", "create_sample"):
            raise SongstepError(f"the planner deployment does not serve {method!r}")
        return getattr(self.lm, method)(*args, **kwargs)

    def plan(self, fields: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
        from songstep.server.worker import Worker

        host = SimpleNamespace(slot=SimpleNamespace(pipe=SimpleNamespace(planner=self.lm)),
                               settings=SimpleNamespace(lm_max_new_tokens=self.max_new_tokens))
        return Worker._planned_fields(host, dict(fields), options)


class Synthesizer:
    """One `Pipeline` (DiT + VAE + text encoder, no LM) per replica."""

    def __init__(self, config: ServingConfig, planner: Any = None):
        import torch

        from songstep.pipeline import Pipeline

        torch.set_num_threads(max(1, int(config.num_cpus)))
        device = config.device or ("cuda" if config.num_gpus > 0 else "cpu")
        self.pipe = Pipeline.from_pretrained(config.model, variant=config.variant, device=device, lm="none",
                                             root=config.root, offline=config.offline)
        self.config, self.planner = config, planner
        self.max_batch = int(config.max_batch or self.pipe.tier.max_batch)
        self._batched.set_max_batch_size(self.max_batch)
        self._batched.set_batch_wait_timeout_s(config.batch_wait_s)
        self.batches: list[int] = []

    def describe(self) -> dict[str, Any]:
        """What the API needs to validate requests without loading weights."""
        comps = self.pipe.components
        return {"variant": comps.variant, "folders": {k: str(v) for k, v in comps.folders.items()},
                "dit_config": comps.dit.config, "max_batch": self.max_batch, "tier": self.pipe.tier.name,
                "planner": self.planner is not None}

    def stats(self) -> dict[str, Any]:
        return {"replica": _replica_id(), "batches": list(self.batches), "pid": os.getpid()}

    async def generate(self, job: dict[str, Any]) -> dict[str, Any]:
        options = job.get("options", {})
        if options.get("sample_mode") or options.get("use_format"):
            if self.planner is None:
                return {"error": "InvalidRequest: sample_mode and use_format need a planner LM; deploy one (lm=...)",
                        "kind": "user"}
            fields = await self.planner.plan.remote(job["fields"], options)
            job = {**job, "fields": fields}
        return await self._batched(job)

    @serve.batch(max_batch_size=_DEFAULT_BATCH, batch_wait_timeout_s=0.05)
    async def _batched(self, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.batches.append(len(jobs))
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(batch_key(job, self.config.duration_bucket_s), []).append(i)
        out: list[dict[str, Any]] = [{} for _ in jobs]
        replica = _replica_id()
        for indices in groups.values():
            for i in indices:
                out[i] = await asyncio.to_thread(self._run_one, jobs[i])
                out[i].update(batch_size=len(jobs), group_size=len(indices), replica=replica)
        return out

    def _run_one(self, job: dict[str, Any]) -> dict[str, Any]:
        from songstep.server.schemas import to_request

        options = job.get("options", {})
        kwargs: dict[str, Any] = {"thinking": False}
        if options.get("normalize") is False:
            kwargs["normalize"] = False
        started = time.perf_counter()
        try:
            result = self.pipe.run(to_request(job["fields"]), output_type="np", **kwargs)
        except Exception as exc:  # reported per request: the batch's other requests still finish
            log.warning("request failed in the replica: %s", exc)
            return _error(exc)
        return {"audio": result.audio, "sample_rate": result.sample_rate, "seeds": list(result.seeds),
                "params": result.params, "timings": dict(result.timings or {}),
                "replica_seconds": time.perf_counter() - started}


def build_app(config: ServingConfig, *, lm_max_new_tokens: int | None = None):
    """The Serve application: the synthesizer (ingress) bound to the planner's handle when an LM
    is configured. Replica counts, GPUs and autoscaling bounds come from `config`."""
    synth_options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": config.num_cpus, "num_gpus": config.num_gpus},
        "max_ongoing_requests": 2 * (config.max_batch or _DEFAULT_BATCH),
        "graceful_shutdown_timeout_s": config.graceful_shutdown_s,
        "health_check_period_s": 2.0,
    }
    if config.autoscale:
        low, high = config.autoscale
        synth_options["autoscaling_config"] = {"min_replicas": low, "max_replicas": high,
                                               "initial_replicas": max(low, 1),
                                               "target_ongoing_requests": config.target_ongoing}
    else:
        synth_options["num_replicas"] = config.replicas
    planner = None
    if config.lm not in ("none", "", None):
        planner = serve.deployment(Planner, name="Planner").options(
            num_replicas=config.lm_replicas,
            ray_actor_options={"num_cpus": config.lm_num_cpus, "num_gpus": config.lm_num_gpus},
            graceful_shutdown_timeout_s=config.graceful_shutdown_s,
        ).bind(config, lm_max_new_tokens)
    return serve.deployment(Synthesizer, name="Synthesizer").options(**synth_options).bind(config, planner)
