"""AutoGen (features.md §3, upstream's UI checkbox): while the user listens to one batch, the
next batch is generated in the background with the next seeds.

    request = GenerationRequest(caption="lofi", duration=30, seed=10, batch=2)
    first = pipe.run(request)                        # seeds 10, 11
    upcoming = pipe.autogen(request, after=first)    # seeds 12, 13 start now
    ...                                              # the user listens
    second = upcoming.result()                       # ready (or waits)
    third = upcoming.next()                          # seeds 14, 15 start

The work runs on one daemon thread per handle; `Pipeline.run` holds the pipeline's lock, so a
background batch and a foreground call never use the models at the same time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from typing import Any

from songstep.config import GenerationRequest

log = logging.getLogger(__name__)


def next_request(request: GenerationRequest, seeds: list[int]) -> GenerationRequest:
    """The batch after one made with `seeds`: the same request, seeds continuing after the last."""
    return request.replace(seed=(seeds[-1] + 1) % 2**63)


class AutoGen:
    """A batch generated in the background: `result()`, `done()`, `cancel()`, `next()`."""

    def __init__(
        self,
        run: Callable[..., Any],
        request: GenerationRequest,
        run_kwargs: dict[str, Any],
        lock: threading.RLock | None = None,
    ):
        if request.seed is None:
            raise ValueError("AutoGen needs a request with its seed resolved")
        self.request = request
        self.seeds = [(request.seed + i) % 2**63 for i in range(request.batch)]
        self._run, self._kwargs = run, dict(run_kwargs)
        self._lock = lock if lock is not None else threading.RLock()
        self._future: Future = Future()
        self._thread = threading.Thread(target=self._work, name="songstep-autogen", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        with self._lock:  # waits for a foreground run; cancel() still works until then
            if not self._future.set_running_or_notify_cancel():
                return
            try:
                log.info("AutoGen: generating seeds %s in the background", self.seeds)
                self._future.set_result(self._run(self.request, **self._kwargs))
            except BaseException as exc:  # handed to whoever calls result()
                self._future.set_exception(exc)

    def result(self, timeout: float | None = None):
        """The `GenerationResult` (waits for it; re-raises the run's error)."""
        return self._future.result(timeout)

    def done(self) -> bool:
        return self._future.done()

    def cancel(self) -> bool:
        """Cancel if the batch has not started yet (it waits while another run holds the
        pipeline); a running batch finishes."""
        return self._future.cancel()

    @property
    def cancelled(self) -> bool:
        return self._future.cancelled()

    def next(self) -> AutoGen:
        """Start the batch after this one (next seeds) in the background."""
        return AutoGen(self._run, next_request(self.request, self.seeds), self._kwargs, self._lock)


__all__ = ["AutoGen", "CancelledError", "next_request"]
