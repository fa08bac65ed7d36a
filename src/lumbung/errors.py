"""One exception tree for all of Lumbung.

Errors are raised in the core and translated once at each edge: the hub maps each class to an HTTP
status (``lumbung.hub.errors``), the client maps statuses back to these classes, and the CLI prints
the message and exits non-zero. Classes are named for what the caller can do about them.
"""

from __future__ import annotations


class LumbungError(Exception):
    """Root of every error Lumbung raises on purpose.

    ``field`` names the offending input (a dotted path such as ``resources.gpus``) when one is to
    blame, so that a user can find it in a spec or a request.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, str]:
        body = {"error": type(self).__name__, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class Rejected(LumbungError):
    """The input is invalid: fix it and try again."""


class HashMismatch(Rejected):
    """Content does not match the SHA-256 it was named by."""


class TooLarge(Rejected):
    """An upload or a body is over its size limit."""


class ProofError(Rejected):
    """A Merkle inclusion or consistency proof (RFC 9162) does not verify."""


class Unauthenticated(LumbungError):
    """A request's signature is missing, forged, stale or replayed."""


class Forbidden(LumbungError):
    """The signer is known but may not act on this object."""


class NotFound(LumbungError):
    """No such object (or not one the caller may see)."""


class Conflict(LumbungError):
    """The object changed underneath the caller, or the action does not fit its state."""


class StaleWrite(Conflict):
    """An optimistic update lost a race: re-read and try again."""


class Unavailable(LumbungError):
    """A dependency is down or busy; retrying later may work."""


class RateLimited(Unavailable):
    """Too many requests from this actor: retrying after ``retry_after_s`` seconds will work."""

    def __init__(
        self, message: str, *, retry_after_s: float = 1.0, field: str | None = None
    ) -> None:
        super().__init__(message, field=field)
        self.retry_after_s = retry_after_s


class Corrupted(LumbungError):
    """Stored data fails its own integrity check (a database edited or damaged behind the
    process's back): restore it from a backup; retrying will not help."""


class ConfigError(LumbungError):
    """A configuration value is missing or malformed; ``field`` names the key."""
