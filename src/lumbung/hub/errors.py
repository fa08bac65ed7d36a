"""The one table mapping Lumbung's errors to HTTP statuses, and the handlers that apply it."""

from __future__ import annotations

import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from lumbung import errors

# Most specific first: the first class an error is an instance of decides its status.
STATUS_BY_ERROR: list[tuple[type[errors.LumbungError], int]] = [
    (errors.TooLarge, 413),
    (errors.HashMismatch, 422),
    (errors.Rejected, 422),
    (errors.ConfigError, 422),
    (errors.Unauthenticated, 401),
    (errors.Forbidden, 403),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.RateLimited, 429),
    (errors.Unavailable, 503),
    (errors.Corrupted, 500),
]


def status_for(exc: errors.LumbungError) -> int:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return 500


def install_error_handlers(app: FastAPI) -> None:
    async def lumbung_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, errors.LumbungError)
        headers = None
        if isinstance(exc, errors.RateLimited):
            # RFC 9110 section 10.2.3: whole seconds; the client waits this long, then retries.
            headers = {"retry-after": str(max(1, math.ceil(exc.retry_after_s)))}
        return JSONResponse(exc.to_dict(), status_code=status_for(exc), headers=headers)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        # FastAPI's own 422 body is a list of pydantic errors; ours names the first field plainly.
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        field = ".".join(loc) or "body"
        message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        body = errors.Rejected(f"{field}: {message}", field=field).to_dict()
        return JSONResponse(body, status_code=422)

    app.add_exception_handler(errors.LumbungError, lumbung_error)
    app.add_exception_handler(RequestValidationError, validation_error)
