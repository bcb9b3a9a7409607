"""Network hygiene of hub calls: finite connect and read timeouts on every request, and the
translation of huggingface_hub / HTTP errors into songstep's typed errors.

huggingface_hub 1.x/2.x builds its HTTP client with `timeout=None`, and several of its calls
(repo listings, repo info without `timeout=`) then wait forever on a host that accepts the
connection and never answers. `install_timeouts()` wraps the transport of every client it makes:
a request without a connect / read / write / pool timeout gets one, and a longer one is capped.
The connect timeout is `HF_HUB_ETAG_TIMEOUT` (default 10 s), the read timeout
`HF_HUB_DOWNLOAD_TIMEOUT` (default 10 s), as huggingface_hub reads them. A timeout is raised as
`HubTimeout` (a `TimeoutError`), which huggingface_hub does not retry, so a silent host costs one
timeout, not minutes of backed-off retries; it becomes a `DownloadError` with the fix.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf

from songstep.errors import DownloadError, ModelNotFound

TIMEOUT_FIX = ("check the network and HF_ENDPOINT, raise HF_HUB_ETAG_TIMEOUT / HF_HUB_DOWNLOAD_TIMEOUT (seconds) "
               "for a slow link, or work offline from local checkpoints (--offline / HF_HUB_OFFLINE=1)")


class HubTimeout(TimeoutError):
    """A hub request got no connection or no answer in time."""


def timeouts() -> dict[str, float]:
    """The connect / read / write / pool limits (seconds) for hub requests."""
    connect = float(hf_constants.HF_HUB_ETAG_TIMEOUT or 10)
    read = float(hf_constants.HF_HUB_DOWNLOAD_TIMEOUT or 10)
    return {"connect": connect, "read": read, "write": read, "pool": connect}


class _TimeoutTransport:
    """Wraps an httpx(2) transport: fills in and caps the request's timeouts; raises timeouts as
    `HubTimeout`."""

    def __init__(self, inner: Any, timeout_error: type[BaseException]) -> None:
        self.inner = inner
        self.timeout_error = timeout_error

    def handle_request(self, request: Any) -> Any:
        limits = timeouts()
        given = dict(request.extensions.get("timeout") or {})
        request.extensions["timeout"] = {k: min(given.get(k) or v, v) for k, v in limits.items()}
        try:
            return self.inner.handle_request(request)
        except self.timeout_error as exc:
            raise HubTimeout(f"no answer from {request.url.host} within {limits['read']:g} s ({type(exc).__name__})") from exc

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> _TimeoutTransport:
        self.inner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.inner.__exit__(*exc)


@functools.cache
def install_timeouts() -> bool:
    """Make huggingface_hub's HTTP clients (this process) use finite timeouts; idempotent.
    False when this huggingface_hub has no client factory (older versions pass timeouts)."""
    from huggingface_hub.utils import _http

    base = getattr(_http, "default_client_factory", None)
    setter = getattr(_http, "set_client_factory", None)
    if base is None or setter is None:
        return False

    def factory() -> Any:
        client = base()
        timeout_error = importlib.import_module(type(client).__module__.split(".")[0]).TimeoutException
        client._transport = _TimeoutTransport(client._transport, timeout_error)
        for pattern, transport in list(client._mounts.items()):
            if transport is not None:
                client._mounts[pattern] = _TimeoutTransport(transport, timeout_error)
        return client

    setter(factory)
    return True


@functools.cache
def transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level errors of the HTTP client this huggingface_hub version uses."""
    names = {"httpx2": "TransportError", "httpx": "TransportError", "requests": "RequestException"}
    found = [getattr(importlib.import_module(m), n) for m, n in names.items() if importlib.util.find_spec(m)]
    return (ConnectionError, TimeoutError, *found)


@contextmanager
def hub_errors(what: str, endpoint: str) -> Iterator[None]:
    """Translate huggingface_hub / HTTP errors into songstep's typed errors."""
    try:
        yield
    except hf.GatedRepoError as e:
        raise ModelNotFound(f"{what}: gated or private repository; log in (`hf auth login`)") from e
    except hf.RepositoryNotFoundError as e:
        raise ModelNotFound(f"{what}: repository not found on {endpoint}") from e
    except hf.RevisionNotFoundError as e:
        raise ModelNotFound(f"{what}: revision not found on {endpoint}") from e
    except hf.LocalEntryNotFoundError as e:  # before EntryNotFoundError: it is a subclass
        raise DownloadError(f"{what}: {endpoint} cannot be reached and the file is not on disk ({e})") from e
    except hf.EntryNotFoundError as e:
        raise ModelNotFound(f"{what}: file or folder not found on {endpoint}") from e
    except hf.HfHubHTTPError as e:
        raise DownloadError(f"{what}: the hub answered with an error: {e}") from e
    except HubTimeout as e:
        raise DownloadError(f"{what}: {e}; {TIMEOUT_FIX}") from e
    except transport_errors() as e:
        raise DownloadError(f"{what}: cannot reach {endpoint} ({type(e).__name__}: {e})") from e
    except OSError as e:  # size check inside huggingface_hub, disk full, permissions
        raise DownloadError(f"{what}: {e}") from e
