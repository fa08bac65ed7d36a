"""Collect witness cosignatures on the hub's latest checkpoint (C2SP tlog-cosignature).

A witness fetches the checkpoint, checks it extends what it saw before, appends its cosignature/v1
line and posts the note back. The hub keeps its own signature line first and merges the witness's
line into the stored note, so ``GET /v1/ledger/checkpoint`` serves every cosignature collected
(signed-note allows any number of signature lines). One line per witness key: a newer cosignature
by the same key replaces the older one.

The witness's key comes in the request as a verifier key of type 0x04 and must be the key that
signed the request (its actor id), so nobody can post a cosignature line in another's name, and
one of the witnesses the hub is configured to accept (``HubConfig.witnesses``): the note has room
for a limited number of signature lines, and throwaway keys must not be able to fill them. Lines
of keys no longer accepted are dropped from the stored note at the next merge.
"""

from __future__ import annotations

import functools
import re
import threading

from lumbung.errors import ConfigError, Conflict, Forbidden, Rejected, Unauthenticated
from lumbung.hub.ledger import LogService
from lumbung.ids import actor_id
from lumbung.ledger.checkpoint import SIG_TYPE_COSIGNATURE_V1, verified_cosignatures
from lumbung.ledger.note import (
    SIG_TYPE_ED25519,
    SignatureLine,
    format_signature_line,
    key_id,
    parse_note,
    parse_vkey,
)

# (key name, key ID) of a signature line: how signed-note tells keys apart.
LineKey = tuple[str, bytes]

# Serialises the read-merge-write of stored notes in this process, so two witnesses posting at
# once do not drop each other's line. Hubs sharing a database can still race here; the loser's
# line is lost until that witness's next round, which re-cosigns.
_MERGE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=16)
def accepted_witnesses(witnesses: str) -> frozenset[LineKey]:
    """The (name, key ID) of each witness verifier key in ``HubConfig.witnesses`` (separated by
    commas or whitespace); ``ConfigError`` naming ``witnesses`` for one that is not such a key."""
    accepted: set[LineKey] = set()
    for text in re.split(r"[\s,]+", witnesses.strip()):
        if not text:
            continue
        try:
            name, public_key = parse_vkey(text, SIG_TYPE_COSIGNATURE_V1)
        except Rejected as exc:
            raise ConfigError(
                f"witnesses: {text!r:.100} is not a witness verifier key: {exc.message}",
                field="witnesses",
            ) from exc
        accepted.add((name, key_id(name, SIG_TYPE_COSIGNATURE_V1, public_key)))
    return frozenset(accepted)


def add_cosignature(
    log: LogService, note: str, witness_vkey: str, signer: str, accepted: frozenset[LineKey]
) -> str:
    """Merge the cosignature of the witness ``witness_vkey`` on ``note`` into the stored note.

    ``signer`` is the actor id that signed the request; ``accepted`` the witnesses this hub takes
    cosignatures from (``accepted_witnesses``). Raises ``Rejected`` for a malformed note or key,
    ``Forbidden`` when the key is not the signer's or not accepted, ``Conflict`` when ``note`` is
    not the latest checkpoint, ``Unauthenticated`` when it carries no valid cosignature by that
    key. Returns the merged note now served.
    """
    name, public_key = parse_vkey(witness_vkey, SIG_TYPE_COSIGNATURE_V1)
    if actor_id(public_key) != signer:
        raise Forbidden("the witness key is not the key that signed this request", field="vkey")
    kid = key_id(name, SIG_TYPE_COSIGNATURE_V1, public_key)
    if (name, kid) not in accepted:
        raise Forbidden(
            f"{name!r} is not a witness this hub accepts cosignatures from"
            " (its operator lists them: hub serve --witness VKEY)",
            field="vkey",
        )
    text, lines = parse_note(note)
    witness_line = _witness_line(lines, name, kid)
    # Raises Unauthenticated if the line does not verify over this very checkpoint text.
    verified_cosignatures(note, {name: public_key})
    with _MERGE_LOCK:
        size, stored = log.store.latest_checkpoint()
        stored_text, stored_lines = parse_note(stored)
        if text != stored_text:
            raise Conflict(
                f"only the latest checkpoint (size {size}) can be cosigned; this note's"
                " checkpoint is another one",
                field="note",
            )
        own = (log.origin, key_id(log.origin, SIG_TYPE_ED25519, log.identity.public_key_raw))
        keep = accepted | {own}
        kept = [
            line
            for line in stored_lines
            if (line.name, line.key_id) in keep and not _same_key(line, witness_line)
        ]
        merged = _format(stored_text, [*kept, witness_line])
        parse_note(merged)  # TooLarge past the signature-count limit: refuse, keep the old note
        log.store.put_checkpoint(size, merged)
    return merged


def _witness_line(lines: list[SignatureLine], name: str, kid: bytes) -> SignatureLine:
    """The witness's newest line: the last, since a witness appends its cosignature to the note
    it fetched, which may already carry its previous one (every such line is verified)."""
    matching = [line for line in lines if line.name == name and line.key_id == kid]
    if not matching:
        raise Unauthenticated(f"the note carries no cosignature by {name!r}", field="note")
    return matching[-1]


def _same_key(a: SignatureLine, b: SignatureLine) -> bool:
    return a.name == b.name and a.key_id == b.key_id


def _format(text: str, lines: list[SignatureLine]) -> str:
    # The stored lines were parsed from canonical base64, so re-encoding gives back the same text;
    # the log's own line stays first because it came first in the stored note.
    block = "".join(format_signature_line(line.name, line.key_id + line.payload) for line in lines)
    return f"{text}\n{block}"
