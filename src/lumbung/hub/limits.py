"""Refuse oversized request bodies before anything reads them into memory.

JSON bodies are small; only artifact uploads (``/v1/blobs/``) are large, and the blob route
streams them to disk under its own limit. A body declared or found to be over ``max_body_bytes``
gets 413 without the application ever holding it.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lumbung.errors import TooLarge

_STREAMED_PREFIX = "/v1/blobs/"


class BodyLimit:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(_STREAMED_PREFIX):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._refuse(send)
            return
        received = 0
        over = False

        async def limited_receive() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # An undeclared (chunked) body that grew too big: the app sees the client
                    # leave and stops reading; the 413 goes out below.
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def quiet_when_over(message: Message) -> None:
            if not over:  # what the app answers to a "disconnected" client is replaced by the 413
                await send(message)

        await self.app(scope, limited_receive, quiet_when_over)
        if over:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        error = TooLarge(f"request body over {self.max_body_bytes} bytes", field="body")
        body = json.dumps(error.to_dict()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
