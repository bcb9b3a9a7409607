"""Load test on loopback: 50 concurrent httpx clients against uvicorn. The worker is held while
the clients submit, so the bounded queue fills: exactly `queue_size` submits are accepted, the
rest get 429 with Retry-After, no request runs past its client timeout (httpx raises on one),
and once the worker runs every accepted job succeeds. Numbers are printed (run with -s)."""

from __future__ import annotations

import asyncio
import resource
import statistics
import threading
import time

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from songstep.server.app import create_app  # noqa: E402
from songstep.server.settings import ServerSettings  # noqa: E402
from tests.server.fakes import FakePipeline  # noqa: E402
from tests.server.live import live_server  # noqa: E402

CLIENTS, SUBMITS_EACH, QUEUE = 50, 4, 40
TIMEOUT = httpx.Timeout(30.0)


class HeldPipeline(FakePipeline):
    def __init__(self):
        super().__init__(delay=0.01, steps=1)
        self.go = threading.Event()

    def run(self, request, **kw):
        self.go.wait(120)
        return super().run(request, **kw)


async def client_session(base: str, n: int, out: dict) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as c:
        for k in range(n):
            t0 = time.perf_counter()
            r = await c.post("/release_task", json={"prompt": f"load {k}", "batch_size": 1, "audio_format": "wav"})
            out["latency"].append(time.perf_counter() - t0)
            out[r.status_code].append(r)
            t0 = time.perf_counter()
            assert (await c.get("/v1/stats")).status_code == 200
            out["latency"].append(time.perf_counter() - t0)


def test_fifty_clients_fill_the_queue_then_429(tmp_path) -> None:
    pipe = HeldPipeline()
    app = create_app(lambda: pipe, ServerSettings(data_dir=tmp_path, queue_size=QUEUE, retry_after=3))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with live_server(app, limit_concurrency=200) as base:
        out = {"latency": [], 200: [], 429: []}

        async def burst():
            await asyncio.gather(*(client_session(base, SUBMITS_EACH, out) for _ in range(CLIENTS)))

        t0 = time.perf_counter()
        asyncio.run(burst())
        burst_s = time.perf_counter() - t0
        accepted = [r.json()["data"]["task_id"] for r in out[200]]
        running = 1 if httpx.get(f"{base}/v1/stats").json()["data"]["jobs"]["running"] else 0
        assert len(out[200]) + len(out[429]) == CLIENTS * SUBMITS_EACH  # every request answered, none other
        assert len(accepted) == QUEUE + running
        assert all(r.headers["retry-after"] == "3" and r.json()["code"] == 429 for r in out[429])
        pipe.go.set()
        with httpx.Client(base_url=base, timeout=TIMEOUT) as c:
            for _ in range(2400):
                stats = c.get("/v1/stats").json()["data"]
                if stats["jobs"]["succeeded"] == len(accepted):
                    break
                time.sleep(0.05)
            assert stats["jobs"]["succeeded"] == len(accepted) and stats["queue_size"] == 0
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    lat = sorted(out["latency"])
    print(f"\nload: {CLIENTS} clients x {SUBMITS_EACH} submits in {burst_s:.2f} s; accepted {len(accepted)}, "
          f"429 {len(out[429])}; latency p50 {statistics.median(lat) * 1000:.0f} ms, "
          f"p95 {lat[int(0.95 * len(lat))] * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms; "
          f"max RSS {rss_before / 1024:.0f} -> {rss_after / 1024:.0f} MiB")
