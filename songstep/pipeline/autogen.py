"""AutoGen: while the user listens to one batch, the
next batch is generated in the background with the next seeds.

    request = GenerationRequest(caption="lofi", duration=30, seed=10, batch=2)
    first = pipe.run(request)                        # seeds 10, 11
    upcoming = pipe.autogen(request, after=first)    # seeds 12, 13 start now
    ...                                              # the user listens
    second = upcoming.result()                       # ready (or waits)
    third = upcoming.next()                          # seeds 14, 15 start

The work runs on one daemon thread per handle; `Pipeline.run` holds the pipeline's lock, so a
background batch and a foreground call never use the models at the same time. `cancel()` stops a
waiting batch at once and a running one at its next progress report (every DiT step, every 16
LM tokens): the pipeline is free again within about a step.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from typing import Any

from songstep.errors import Cancelled
from songstep.request import MAX_SEED, GenerationRequest, next_seed, take_seeds

log = logging.getLogger(__name__)


def next_request(request: GenerationRequest, seeds: list[int]) -> GenerationRequest:
    """The batch after one made with `seeds`: the same request, seeds continuing after the last."""
    first = next_seed(seeds[-1])
    return request.replace(seed=first if first + request.batch - 1 <= MAX_SEED else 0)


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
        self.seeds = take_seeds(request.seed, request.batch)
        self._run, self._kwargs = run, dict(run_kwargs)
        self._lock = lock if lock is not None else threading.RLock()
        self._stop = threading.Event()
        self._future: Future = Future()
        self._thread = threading.Thread(target=self._work, name="songstep-autogen", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        with self._lock:  # waits for a foreground run; cancel() still works until then
            if not self._future.set_running_or_notify_cancel():
                return
            try:
                log.info("AutoGen: generating seeds %s in the background", self.seeds)
                kwargs = {**self._kwargs, "progress": self._checked(self._kwargs.get("progress"))}
                self._future.set_result(self._run(self.request, **kwargs))
            except Cancelled:
                log.info("AutoGen: seeds %s cancelled while running", self.seeds)
                self._future.set_exception(CancelledError())
            except BaseException as exc:  # handed to whoever calls result()
                self._future.set_exception(exc)

    def _checked(self, progress):
        """The run's progress callback, raising `Cancelled` once `cancel()` was called."""

        def report(stage: str, done: int, total: int) -> None:
            if self._stop.is_set():
                raise Cancelled("AutoGen batch cancelled")
            if progress is not None:
                progress(stage, done, total)

        return report

    def result(self, timeout: float | None = None):
        """The `GenerationResult` (waits for it; re-raises the run's error)."""
        return self._future.result(timeout)

    def done(self) -> bool:
        return self._future.done()

    def cancel(self) -> bool:
        """Cancel the batch: a waiting one at once, a running one at its next progress report.
        False when it had already finished. `result()` then raises `CancelledError`."""
        if self._future.cancel():
            return True
        if self._future.done():
            return False
        self._stop.set()
        return True

    @property
    def cancelled(self) -> bool:
        """True once cancelled (for a running batch: once it has stopped)."""
        if self._future.cancelled():
            return True
        return self._future.done() and isinstance(self._future.exception(), CancelledError)

    def next(self) -> AutoGen:
        """Start the batch after this one (next seeds) in the background."""
        return AutoGen(self._run, next_request(self.request, self.seeds), self._kwargs, self._lock)


__all__ = ["AutoGen", "CancelledError", "next_request"]
