"""Signed HTTP requests (RFC 9421 HTTP Message Signatures, RFC 9530 Content-Digest)."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Iterator

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from lumbung.client.auth import SignedAuth
from lumbung.crypto.httpsig import (
    VerifiedRequest,
    content_digest,
    keyid_of,
    serialize_signature_params,
    sign_request,
    signature_base,
    verify_request,
)
from lumbung.crypto.keys import Identity
from lumbung.errors import Unauthenticated

NOW = 1_700_000_000
MAX_AGE_S = 300
# Fixed keys: test ids are built from them, and every pytest-xdist worker must see the same.
ALICE = Identity(Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32))
MALLORY = Identity(Ed25519PrivateKey.from_private_bytes(bytes([3]) * 32))

# RFC 9421 appendix B.1.4, test-key-ed25519.
RFC_TEST_KEY_ED25519 = b"""-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF
-----END PRIVATE KEY-----
"""


def _signed(
    body: bytes | None = b'{"n": 1}', *, path: str = "/v1/jobs", nonce: str | None = None
) -> dict[str, str]:
    return sign_request(
        ALICE, method="post", path=path, query="a=1", body=body, created=NOW, nonce=nonce
    )


def _verify(
    headers: dict[str, str],
    *,
    method: str = "POST",
    path: str = "/v1/jobs",
    query: str = "a=1",
    body: bytes | None = b'{"n": 1}',
    now: float = NOW,
) -> VerifiedRequest:
    return verify_request(
        method=method,
        path=path,
        query=query,
        headers=headers,
        body=body,
        now=now,
        max_age_s=MAX_AGE_S,
    )


def test_content_digest_is_sha256_in_structured_field_form() -> None:
    # RFC 9530 appendix B.1 style: the SHA-256 of {"hello": "world"} followed by a newline.
    assert content_digest(b'{"hello": "world"}\n') == (
        "sha-256=:RK/0qy18MlBSVnWgjwz6lZEWjP/lF5HF9bvEF8FabDg=:"
    )


def test_signature_base_matches_hand_written_rfc_9421_form() -> None:
    headers = _signed(b"", nonce="n0nce")
    keyid = keyid_of(ALICE.public_key_raw)
    expected_params = (
        '("@method" "@path" "@query" "content-digest");'
        f'created={NOW};keyid="{keyid}";alg="ed25519";nonce="n0nce"'
    )
    assert headers["Signature-Input"] == f"sig1={expected_params}"
    expected_base = (
        '"@method": POST\n'
        '"@path": /v1/jobs\n'
        '"@query": ?a=1\n'
        '"content-digest": sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:\n'
        f'"@signature-params": {expected_params}'
    )
    signature = base64.b64decode(headers["Signature"].removeprefix("sig1=:").removesuffix(":"))
    from lumbung.crypto.keys import verify_signature

    verify_signature(ALICE.public_key_raw, signature, expected_base.encode())


def test_signature_base_reproduces_rfc_9421_appendix_b_2_6() -> None:
    components = [
        ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
        ("@method", "POST"),
        ("@path", "/foo"),
        ("@authority", "example.com"),
        ("content-type", "application/json"),
        ("content-length", "18"),
    ]
    params = serialize_signature_params(
        [name for name, _ in components], [("created", 1618884473), ("keyid", "test-key-ed25519")]
    )
    base = signature_base(components, params)
    assert base.endswith(
        '"@signature-params": ("date" "@method" "@path" "@authority" "content-type" '
        '"content-length");created=1618884473;keyid="test-key-ed25519"'
    )
    signature = Identity.from_pem(RFC_TEST_KEY_ED25519).sign(base.encode())
    # Ed25519 is deterministic, so the RFC's signature value must come out byte for byte.
    assert base64.b64encode(signature).decode() == (
        "wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw=="
    )


def test_empty_query_is_signed_as_a_lone_question_mark() -> None:
    headers = sign_request(
        ALICE, method="GET", path="/v1/ledger", query="", body=None, created=NOW, nonce="x"
    )
    assert "content-digest" not in headers["Signature-Input"]
    assert "Content-Digest" not in headers
    verified = _verify(headers, method="GET", path="/v1/ledger", query="", body=None)
    assert verified.actor_id == ALICE.actor_id


def test_signed_request_verifies_and_names_the_signer() -> None:
    verified = _verify(_signed(nonce="abc"))
    assert verified == VerifiedRequest(
        actor_id=ALICE.actor_id, public_key_raw=ALICE.public_key_raw, nonce="abc", created=NOW
    )


def test_verification_accepts_headers_in_any_case() -> None:
    headers = {key.upper(): value for key, value in _signed().items()}
    assert _verify(headers).actor_id == ALICE.actor_id


def test_each_signature_gets_a_fresh_random_nonce() -> None:
    assert _verify(_signed()).nonce != _verify(_signed()).nonce


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"body": b'{"n": 2}'}, "content digest does not match the body"),
        ({"path": "/v1/jobs/other"}, "forged signature"),
        ({"method": "PUT"}, "forged signature"),
        ({"query": "a=2"}, "forged signature"),
        ({"query": ""}, "forged signature"),
        ({"now": NOW + MAX_AGE_S + 1}, "stale signature (created 301 s ago; limit 300 s)"),
        ({"now": NOW - 61}, "stale signature (created 61 s in the future; limit 60 s)"),
    ],
)
def test_tampered_or_stale_request_is_rejected_naming_the_problem(
    change: dict[str, object], message: str
) -> None:
    with pytest.raises(Unauthenticated) as caught:
        _verify(_signed(), **change)  # type: ignore[arg-type]
    assert caught.value.message == message


def test_signature_at_the_edges_of_the_window_is_accepted() -> None:
    _verify(_signed(), now=NOW + MAX_AGE_S)
    _verify(_signed(), now=NOW - 60)


def test_body_and_digest_replaced_together_is_rejected_as_forged() -> None:
    headers = _signed()
    headers["Content-Digest"] = content_digest(b"evil")
    with pytest.raises(Unauthenticated, match=r"^forged signature$"):
        _verify(headers, body=b"evil")


def test_signature_under_another_keyid_is_rejected_as_forged() -> None:
    headers = _signed()
    headers["Signature-Input"] = headers["Signature-Input"].replace(
        keyid_of(ALICE.public_key_raw), keyid_of(MALLORY.public_key_raw)
    )
    with pytest.raises(Unauthenticated, match=r"^forged signature$"):
        _verify(headers)


def test_signature_with_one_bit_flipped_is_rejected_as_forged() -> None:
    headers = _signed()
    raw = bytearray(base64.b64decode(headers["Signature"][len("sig1=:") : -1]))
    raw[10] ^= 0x01
    headers["Signature"] = f"sig1=:{base64.b64encode(bytes(raw)).decode()}:"
    with pytest.raises(Unauthenticated, match=r"^forged signature$"):
        _verify(headers)


@pytest.mark.parametrize("dropped", ["Signature", "Signature-Input"])
def test_request_without_signature_headers_is_rejected(dropped: str) -> None:
    headers = _signed()
    del headers[dropped]
    with pytest.raises(Unauthenticated, match=r"^missing signature$"):
        _verify(headers)


def test_body_without_content_digest_header_is_rejected() -> None:
    headers = _signed()
    del headers["Content-Digest"]
    with pytest.raises(Unauthenticated, match=r"^content digest does not match the body$"):
        _verify(headers)


def test_body_signed_as_streamed_is_rejected_when_verifier_has_the_body() -> None:
    with pytest.raises(Unauthenticated, match=r"^signature does not cover content-digest$"):
        _verify(_signed(body=None))


def _resign_covering(components: str, *, nonce: bool = True) -> dict[str, str]:
    """Headers signed by Alice over a chosen component list, built from the public pieces."""
    names = re.findall(r'"([^"]+)"', components)
    values = {"@method": "POST", "@path": "/v1/jobs", "@query": "?a=1"}
    params: list[tuple[str, int | str]] = [
        ("created", NOW),
        ("keyid", keyid_of(ALICE.public_key_raw)),
        ("alg", "ed25519"),
    ]
    if nonce:
        params.append(("nonce", "n"))
    inner = serialize_signature_params(names, params)
    base = signature_base([(name, values[name]) for name in names], inner)
    signature = base64.b64encode(ALICE.sign(base.encode())).decode()
    return {"Signature-Input": f"sig1={inner}", "Signature": f"sig1=:{signature}:"}


@pytest.mark.parametrize(
    ("components", "missing"),
    [
        ('("@path" "@query")', "@method"),
        ('("@method" "@query")', "@path"),
        ('("@method" "@path")', "@query"),
        ("()", "@method, @path, @query"),
    ],
)
def test_signature_not_covering_a_required_component_is_rejected(
    components: str, missing: str
) -> None:
    headers = _resign_covering(components)
    with pytest.raises(Unauthenticated) as caught:
        _verify(headers, body=None)
    assert caught.value.message == f"signature does not cover {missing}"


def test_signature_without_nonce_is_rejected() -> None:
    headers = _resign_covering('("@method" "@path" "@query")', nonce=False)
    with pytest.raises(Unauthenticated, match=r"^missing nonce$"):
        _verify(headers, body=None)


def test_genuine_signature_over_exactly_the_required_components_verifies() -> None:
    headers = _resign_covering('("@method" "@path" "@query")')
    assert _verify(headers, body=None).actor_id == ALICE.actor_id


def _replace_input(old: str, new: str) -> dict[str, str]:
    headers = _signed(nonce="n")
    assert old in headers["Signature-Input"]
    headers["Signature-Input"] = headers["Signature-Input"].replace(old, new)
    return headers


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("sig1=", "sig2="),
        ("sig1=", ""),
        ('alg="ed25519"', 'alg="rsa-pss-sha512"'),
        (';alg="ed25519"', ""),
        (f"created={NOW}", f'created="{NOW}"'),
        (f";created={NOW}", ""),
        (f"created={NOW}", "created=1.5"),
        ('nonce="n"', 'nonce="n";nonce="m"'),
        ('nonce="n"', 'nonce="n";expires=1'),
        ('nonce="n"', 'nonce="n" trailing'),
        ('nonce="n"', 'nonce="\\n"'),
        ('("@method"', '"@method"'),
        ('"@method" "@path"', '"@method""@path"'),
        ('"@method"', '"@method" "@method"'),
        ('"@method"', '"@method" "@authority"'),
        ('"@method"', '"@method" "x-not-sent"'),
        (keyid_of(ALICE.public_key_raw), "not-a-key"),
        (keyid_of(ALICE.public_key_raw), keyid_of(ALICE.public_key_raw)[:-1] + "!"),
        ('nonce="n"', 'nonce="' + "n" * 200 + '"'),
        ('nonce="n"', 'nonce="' + "n" * 5000 + '"'),
    ],
)
def test_malformed_signature_input_is_rejected_as_malformed(old: str, new: str) -> None:
    with pytest.raises(Unauthenticated, match=r"^malformed signature"):
        _verify(_replace_input(old, new))


def test_keyid_with_nonzero_spare_bits_is_rejected_as_malformed() -> None:
    keyid = keyid_of(ALICE.public_key_raw)
    # The last of 43 base64url characters carries 2 spare bits; set one so the key bytes stay equal.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = keyid[:-1] + alphabet[alphabet.index(keyid[-1]) ^ 1]
    with pytest.raises(Unauthenticated, match=r"^malformed signature: bad keyid$"):
        _verify(_replace_input(keyid, twin))


@pytest.mark.parametrize(
    "signature",
    [
        "sig1=abc",
        "sig2=:AAAA:",
        "sig1=:not base64!:",
        "sig1=:AAAA:",  # decodes, but not 64 bytes
        "sig1=:" + "A" * 5000 + ":",
    ],
)
def test_malformed_signature_field_is_rejected_as_malformed(signature: str) -> None:
    headers = _signed()
    headers["Signature"] = signature
    with pytest.raises(Unauthenticated, match=r"^malformed signature"):
        _verify(headers)


def test_path_with_a_line_break_cannot_inject_signature_base_lines() -> None:
    with pytest.raises(Unauthenticated, match=r"^malformed signature"):
        _verify(_signed(), path='/v1/jobs\n"@query": ?a=1')


# RFC 3986 pchar: what a percent-encoded request path is made of.
_PATH_SEGMENT = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@%",
    max_size=20,
)
_PATHS = st.lists(_PATH_SEGMENT, min_size=1, max_size=5).map(lambda parts: "/" + "/".join(parts))


@given(body=st.binary(max_size=2048), path=_PATHS)
def test_any_body_and_path_round_trip(body: bytes, path: str) -> None:
    headers = sign_request(ALICE, method="PUT", path=path, query="", body=body, created=NOW)
    verified = _verify(headers, method="PUT", path=path, query="", body=body)
    assert verified.actor_id == ALICE.actor_id


@given(data=st.data(), body=st.binary(min_size=1, max_size=512))
def test_any_single_byte_change_to_the_body_is_rejected(data: st.DataObject, body: bytes) -> None:
    headers = sign_request(ALICE, method="POST", path="/p", query="", body=body, created=NOW)
    index = data.draw(st.integers(0, len(body) - 1))
    new_byte = data.draw(st.integers(0, 255).filter(lambda value: value != body[index]))
    tampered = body[:index] + bytes([new_byte]) + body[index + 1 :]
    with pytest.raises(Unauthenticated, match=r"^content digest does not match the body$"):
        _verify(headers, path="/p", query="", body=tampered)


def _recording_transport(seen: list[httpx.Request]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    return httpx.MockTransport(handle)


def _verify_sent(request: httpx.Request, body: bytes | None) -> VerifiedRequest:
    path, _, query = request.url.raw_path.decode().partition("?")
    return verify_request(
        method=request.method,
        path=path,
        query=query,
        headers=request.headers,
        body=body,
        now=NOW,
        max_age_s=MAX_AGE_S,
    )


def test_signed_auth_produces_headers_the_verifier_accepts() -> None:
    seen: list[httpx.Request] = []
    auth = SignedAuth(ALICE, clock=lambda: NOW + 0.9)
    with httpx.Client(transport=_recording_transport(seen), auth=auth) as client:
        client.post("http://hub.test/v1/jobs?dry_run=1&x=%20y", json={"kind": "run"})
        client.get("http://hub.test/v1/ledger")
    posted, got = seen
    verified = _verify_sent(posted, posted.content)
    assert (verified.actor_id, verified.created) == (ALICE.actor_id, NOW)
    assert _verify_sent(got, b"").actor_id == ALICE.actor_id
    with pytest.raises(Unauthenticated, match="content digest"):
        _verify_sent(posted, posted.content + b" ")


def test_signed_auth_signs_streamed_uploads_without_reading_the_body() -> None:
    seen: list[httpx.Request] = []
    pulled: list[bytes] = []

    def chunks() -> Iterator[bytes]:
        for chunk in (b"a" * 10, b"b" * 10):
            pulled.append(chunk)
            yield chunk

    auth = SignedAuth(ALICE, clock=lambda: NOW)
    request_body: list[bytes] = []
    with httpx.Client(transport=_recording_transport(seen), auth=auth) as client:
        request = client.build_request(
            "PUT",
            "http://hub.test/v1/blobs/abc",
            content=chunks(),
            headers={"x-lumbung-streamed": "1"},
        )
        flow = auth.sync_auth_flow(request)
        signed = next(flow)
        assert pulled == [], "signing must not pull the stream"
        assert "content-digest" not in signed.headers
        request_body.extend(signed.stream)  # type: ignore[arg-type]
    assert b"".join(request_body) == b"a" * 10 + b"b" * 10
    assert _verify_sent(signed, None).actor_id == ALICE.actor_id


def test_signed_auth_works_with_the_async_client() -> None:
    seen: list[httpx.Request] = []

    async def send() -> None:
        transport = _recording_transport(seen)
        auth = SignedAuth(ALICE, clock=lambda: NOW)
        async with httpx.AsyncClient(transport=transport, auth=auth) as client:
            await client.post("http://hub.test/v1/jobs", content=b"payload")

    asyncio.run(send())
    (sent,) = seen
    assert _verify_sent(sent, b"payload").actor_id == ALICE.actor_id
