"""Signed HTTP to the hub, and the one place hub errors become exceptions again.

The hub answers every error with ``{"error": ClassName, "message": ..., "field": ...}``; the class
name maps back to the same ``lumbung.errors`` class, and an unknown one falls back by status.

A 429 (``RateLimited``) is waited out here: the hub refused the request before acting on it, so
it is sent again after the ``Retry-After`` the hub gave, a few times; if the hub still refuses,
the ``RateLimited`` raised is an ``Unavailable``, which callers already retry as they do a 503.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from lumbung import errors
from lumbung.client.auth import SignedAuth
from lumbung.crypto.keys import Identity
from lumbung.errors import HashMismatch, LumbungError

_BY_STATUS: dict[int, type[LumbungError]] = {
    400: errors.Rejected,
    401: errors.Unauthenticated,
    403: errors.Forbidden,
    404: errors.NotFound,
    409: errors.Conflict,
    413: errors.TooLarge,
    422: errors.Rejected,
    429: errors.RateLimited,
    503: errors.Unavailable,
}
_CHUNK_BYTES = 1024 * 1024
# A rate-limited request is sent again this many times, each after the hub's Retry-After (at
# most _RETRY_AFTER_MAX_S; 1 s when the hub gave none).
RATE_LIMIT_RETRIES = 5
_RETRY_AFTER_MAX_S = 30.0


def error_from_response(response: httpx.Response) -> LumbungError:
    try:
        body = response.json()
        name, message, field = body["error"], body["message"], body.get("field")
    except (ValueError, KeyError, TypeError):
        name, message, field = "", response.text[:500] or response.reason_phrase, None
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, LumbungError)):
        cls = _BY_STATUS.get(response.status_code, errors.Unavailable)
    text = f"{message} (HTTP {response.status_code})"
    if issubclass(cls, errors.RateLimited):
        return cls(text, retry_after_s=retry_after_s(response), field=field)
    return cls(text, field=field)


def retry_after_s(response: httpx.Response) -> float:
    """The response's Retry-After in seconds (RFC 9110 section 10.2.3, the delay form)."""
    try:
        return min(max(float(response.headers.get("retry-after", "1")), 0.0), _RETRY_AFTER_MAX_S)
    except ValueError:
        return 1.0


class HubTransport:
    """One signed HTTP session with a hub."""

    def __init__(
        self,
        hub_url: str,
        identity: Identity,
        *,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.identity = identity
        self._http = httpx.Client(
            base_url=hub_url.rstrip("/"),
            auth=SignedAuth(identity),
            timeout=timeout_s,
            transport=transport,
        )

    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        kwargs: dict[str, Any] = {"params": params}
        if json is not None:
            kwargs["json"] = json
        if timeout_s is not None:
            kwargs["timeout"] = timeout_s
        try:
            response = _waiting_out_rate_limits(lambda: self._http.request(method, path, **kwargs))
        except httpx.TransportError as exc:
            raise errors.Unavailable(
                f"cannot reach the hub at {self._http.base_url}: {exc}"
            ) from exc
        if response.status_code >= 400:
            raise error_from_response(response)
        return response.json() if response.content else None

    def get_text(self, path: str) -> str:
        """GET a plain-text resource (a signed note, say) and return its body."""
        try:
            response = self._http.get(path)
        except httpx.TransportError as exc:
            raise errors.Unavailable(
                f"cannot reach the hub at {self._http.base_url}: {exc}"
            ) from exc
        if response.status_code >= 400:
            raise error_from_response(response)
        return response.text

    def upload_file(self, path: Path) -> str:
        """Upload a file as an artifact (streamed) and return its SHA-256."""
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
                digest.update(chunk)
        sha256 = digest.hexdigest()

        def chunks() -> Iterator[bytes]:
            with path.open("rb") as f:
                yield from iter(lambda: f.read(_CHUNK_BYTES), b"")

        self._put_blob(sha256, chunks, path.stat().st_size)
        return sha256

    def upload_bytes(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        self._put_blob(sha256, lambda: iter([data]), len(data))
        return sha256

    def _put_blob(
        self, sha256: str, chunks: Callable[[], Iterator[bytes]], size_bytes: int
    ) -> None:
        headers = {"x-lumbung-streamed": "1", "content-length": str(size_bytes)}
        try:
            # ``chunks`` makes a fresh stream for each try: a refused upload is sent again whole.
            response = _waiting_out_rate_limits(
                lambda: self._http.put(f"/v1/blobs/{sha256}", content=chunks(), headers=headers)
            )
        except httpx.TransportError as exc:
            raise errors.Unavailable(f"upload of {sha256} failed: {exc}") from exc
        if response.status_code >= 400:
            raise error_from_response(response)

    def download(self, sha256: str, dest: Path) -> None:
        """Fetch an artifact into ``dest``, checking it against its name before it appears there."""
        tmp = dest.with_name(dest.name + ".part")
        digest = hashlib.sha256()
        try:
            with self._http.stream("GET", f"/v1/blobs/{sha256}") as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_from_response(response)
                with tmp.open("wb") as f:
                    for chunk in response.iter_bytes(_CHUNK_BYTES):
                        digest.update(chunk)
                        f.write(chunk)
        except httpx.TransportError as exc:
            tmp.unlink(missing_ok=True)
            raise errors.Unavailable(f"download of {sha256} failed: {exc}") from exc
        if digest.hexdigest() != sha256:
            tmp.unlink(missing_ok=True)
            raise HashMismatch(f"artifact {sha256} arrived with hash {digest.hexdigest()}")
        tmp.replace(dest)

    def close(self) -> None:
        self._http.close()


def _waiting_out_rate_limits(send: Callable[[], httpx.Response]) -> httpx.Response:
    """``send()``, again after each 429's Retry-After, up to ``RATE_LIMIT_RETRIES`` times."""
    response = send()
    for _ in range(RATE_LIMIT_RETRIES):
        if response.status_code != 429:
            break
        time.sleep(retry_after_s(response))
        response = send()
    return response
