"""Sign every outgoing request with the caller's identity (RFC 9421; see lumbung.crypto.httpsig).

httpx's whole auth contract is a generator that yields the request to send, so this class works the
same over a real connection and over ``httpx.MockTransport`` in tests.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Generator

import httpx

from lumbung.crypto.httpsig import sign_request
from lumbung.crypto.keys import Identity

# A request carrying this header streams its body (a large upload): it is signed without a
# Content-Digest, so it never has to be held in memory; the hub checks such bodies by their SHA-256.
STREAMED_HEADER = "x-lumbung-streamed"


class SignedAuth(httpx.Auth):
    """An httpx auth that adds ``Signature-Input``, ``Signature`` and ``Content-Digest`` headers.

    ``clock`` gives the signature's ``created`` time in Unix seconds; tests pass a fixed one.
    """

    # httpx's default flows read every body before signing when this is true, which would pull a
    # streamed upload into memory. The flows below read the body themselves, except when streamed.
    requires_request_body = False

    def __init__(self, identity: Identity, clock: Callable[[], float] = time.time) -> None:
        self._identity = identity
        self._clock = clock

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        if not _is_streamed(request):
            request.read()
        yield from self.auth_flow(request)

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if not _is_streamed(request):
            await request.aread()
        yield self._signed(request)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        yield self._signed(request)

    def _signed(self, request: httpx.Request) -> httpx.Request:
        path, _, query = request.url.raw_path.decode("ascii").partition("?")
        headers = sign_request(
            self._identity,
            method=request.method,
            path=path,
            query=query,
            body=None if _is_streamed(request) else request.content,
            created=int(self._clock()),
        )
        request.headers.update(headers)
        return request


def _is_streamed(request: httpx.Request) -> bool:
    return request.headers.get(STREAMED_HEADER) == "1"
