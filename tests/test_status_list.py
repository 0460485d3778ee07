"""Token Status List: the draft's own example vectors, an independent reader, the signed token.

The reader below is written from the text of draft-ietf-oauth-status-list-20 section 4.1
("the status of the Referenced Token at index idx is in the byte array at bit position
idx * bits, counted from the least significant bit of byte 0"), not from the writer's code.
"""

from __future__ import annotations

import base64
import json
import random
import zlib
from datetime import timedelta
from typing import Any

import pytest
from jwcrypto import jwk, jws

from attester.service import AttesterService
from attester.status_list import BITS, MEDIA_TYPE, TYP, encode_statuses
from attester.storage.admin import AdminStore
from attester.storage.status_entries import StatusEntries
from tests.support import MutableClock

# draft-ietf-oauth-status-list-20, section 4.1: the 1-bit example (16 statuses, bytes B9 A3)
DRAFT_1BIT = {
    "bits": 1,
    "lst": "eNrbuRgAAhcBXQ",
    "statuses": [1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1],
}
# the 2-bit example (12 statuses, bytes C9 44 F9)
DRAFT_2BIT = {
    "bits": 2,
    "lst": "eNo76fITAAPfAgc",
    "statuses": [1, 2, 0, 3, 0, 1, 0, 1, 1, 2, 3, 3],
}


def read_status(status_list: dict[str, Any], idx: int) -> int:
    """Independent reader: base64url-decode, inflate (ZLIB), take ``bits`` bits at idx*bits."""
    bits = status_list["bits"]
    assert bits in (1, 2, 4, 8)
    lst = status_list["lst"]
    data = zlib.decompressobj().decompress(base64.urlsafe_b64decode(lst + "=" * (-len(lst) % 4)))
    position = idx * bits
    if position // 8 >= len(data):
        raise IndexError("index outside the list")
    return (data[position // 8] >> (position % 8)) & ((1 << bits) - 1)


@pytest.mark.parametrize("vector", [DRAFT_1BIT, DRAFT_2BIT], ids=["1bit", "2bit"])
def test_status_reader_draft_vectors_decode(vector: dict[str, Any]) -> None:
    got = [read_status(vector, i) for i in range(len(vector["statuses"]))]
    assert got == vector["statuses"]


@pytest.mark.parametrize("vector", [DRAFT_1BIT, DRAFT_2BIT], ids=["1bit", "2bit"])
def test_status_writer_draft_vectors_reproduced(vector: dict[str, Any]) -> None:
    statuses = dict(enumerate(vector["statuses"]))
    assert encode_statuses(statuses, size=len(statuses), bits=vector["bits"]) == vector["lst"]


def test_status_writer_random_list_read_back_by_independent_reader() -> None:
    rng = random.Random(7)
    size = 100_003
    statuses = {rng.randrange(size): rng.choice([1, 2]) for _ in range(2000)}
    status_list = {"bits": BITS, "lst": encode_statuses(statuses, size=size)}
    for idx in list(statuses) + [rng.randrange(size) for _ in range(2000)]:
        assert read_status(status_list, idx) == statuses.get(idx, 0)
    assert read_status(status_list, size - 1) == statuses.get(size - 1, 0)


def _verify_token(service: AttesterService, token: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify the Status List Token with jwcrypto against the published JWKS."""
    keys = jwk.JWKSet.from_json(service.jwks().body)
    verifier = jws.JWS()
    verifier.deserialize(token.decode())
    header = verifier.jose_header
    verifier.verify(keys.get_key(header["kid"]))
    return header, json.loads(verifier.payload)


def _instance(service: AttesterService, thumb: str = "t" * 43) -> str:
    record = service.store.register_instance(
        platform="android", client_id="c", key_thumbprint=thumb, instance_jwk={"kty": "EC"},
        now=service.clock(),
    )
    return record.id


def test_status_token_signed_with_draft_claims(service: AttesterService, clock: MutableClock) -> None:
    signed = service.status_lists.token(0)
    assert signed is not None
    header, claims = _verify_token(service, signed.token)
    assert header["typ"] == TYP == "statuslist+jwt" and header["alg"] == "ES256"
    uri = service.settings.issuer + "/statuslists/0"
    assert claims["sub"] == uri
    assert claims["iat"] == int(clock.now.timestamp())
    assert claims["exp"] - claims["iat"] == service.settings.status_list.lifetime
    assert claims["ttl"] == service.settings.status_list.ttl
    assert claims["status_list"]["bits"] == 2
    assert read_status(claims["status_list"], service.settings.status_list.size - 1) == 0
    assert MEDIA_TYPE == "application/statuslist+jwt"


def test_status_token_unknown_list_none(service: AttesterService) -> None:
    assert service.status_lists.token(1) is None and service.status_lists.token(-1) is None


def test_status_token_cached_until_revocation(service: AttesterService) -> None:
    instance = _instance(service)
    claim = service.status_lists.allocate(instance, expires_at=service.clock() + timedelta(hours=1))
    idx = claim["status_list"]["idx"]
    first = service.status_lists.token(0)
    assert first is not None and service.status_lists.token(0) is first  # same cached bytes
    AdminStore(service.store.engine).change_status(instance, "suspend", actor="t", reason="r", now=service.clock())
    # the admin use case invalidates; here a second replica's change is seen via the version
    service.status_lists.invalidate([0])
    second = service.status_lists.token(0)
    assert second is not None and second.etag != first.etag
    _, claims = _verify_token(service, second.token)
    assert read_status(claims["status_list"], idx) == 2


def test_status_token_other_replica_change_seen_after_check_interval(
    make_settings: Any, clock: MutableClock
) -> None:
    from attester.service import build_service

    settings = make_settings(status_list={"check_interval": 0})
    one, two = build_service(settings, clock=clock), build_service(settings, clock=clock)
    try:
        instance = _instance(one)
        idx = one.status_lists.allocate(instance, expires_at=clock.now + timedelta(hours=1))[
            "status_list"
        ]["idx"]
        before = two.status_lists.token(0)
        AdminStore(one.store.engine).change_status(instance, "revoke", actor="t", reason="r", now=clock.now)
        after = two.status_lists.token(0)  # replica two never heard of it but checks the version
        assert before is not None and after is not None and after.etag != before.etag
        _, claims = _verify_token(two, after.token)
        assert read_status(claims["status_list"], idx) == 1
    finally:
        one.store.dispose()
        two.store.dispose()


def test_status_token_leaves_out_a_jwt_past_exp_and_skew_so_its_index_can_be_freed(
    service: AttesterService, clock: MutableClock
) -> None:
    # a list that still said "revoked" for an expired JWT's index, signed just before the
    # purge freed that index, marked the index's next JWT revoked (found in review)
    instance = _instance(service)
    expires = clock.now + timedelta(hours=1)
    idx = service.status_lists.allocate(instance, expires_at=expires)["status_list"]["idx"]
    AdminStore(service.store.engine).change_status(instance, "revoke", actor="t", reason="r", now=clock.now)
    service.status_lists.invalidate([0])
    skew = service.settings.clock_skew
    clock.advance(3600 + skew - 1)  # exp + skew not yet passed: an AS may still take the JWT
    service.status_lists.invalidate([0])
    token = service.status_lists.token(0)
    assert token is not None
    assert read_status(_verify_token(service, token.token)[1]["status_list"], idx) == 1
    clock.advance(2)  # past it: every AS refuses the JWT by its exp alone
    service.status_lists.invalidate([0])
    token = service.status_lists.token(0)
    assert token is not None
    assert read_status(_verify_token(service, token.token)[1]["status_list"], idx) == 0
    assert StatusEntries(service.store.engine).statuses(0) == {idx: 1}  # kept till the purge


def test_status_token_resigned_when_half_lifetime_passed(service: AttesterService, clock: MutableClock) -> None:
    first = service.status_lists.token(0)
    clock.advance(service.settings.status_list.lifetime // 2 + 1)
    second = service.status_lists.token(0)
    assert first is not None and second is not None and second.token != first.token
    _, claims = _verify_token(service, second.token)
    assert claims["iat"] == int(clock.now.timestamp())


def test_status_lists_shrunk_below_stored_entries_refused(make_settings: Any, clock: MutableClock) -> None:
    from attester.service import build_service
    from attester.settings import ConfigError

    service = build_service(make_settings(status_list={"count": 2, "size": 20000}), clock=clock)
    instance = _instance(service)
    entries = StatusEntries(service.store.engine)
    while (extent := entries.extent())[0] < 1 or extent[1] < 10000:  # random: a few draws
        service.status_lists.allocate(instance, expires_at=clock() + timedelta(hours=1))
    service.store.dispose()
    for smaller in ({"count": 1, "size": 20000}, {"count": 2, "size": 10000}):
        with pytest.raises(ConfigError, match="too small"):
            build_service(make_settings(status_list=smaller), clock=clock)
    build_service(make_settings(status_list={"count": 3, "size": 20000}), clock=clock).store.dispose()


def test_status_document_source_stale_none_fresh_same_bytes(service: AttesterService, clock: MutableClock) -> None:
    """The cached-bytes source serves only what ``fresh`` has (no I/O on the event loop);
    anything due for a version check or re-signing goes on to the route (None)."""
    from attester.routes import document_sources

    source = document_sources(service)["/statuslists/0"]
    assert source() is None  # never built: the route builds it in a worker thread
    signed = service.status_lists.token(0)
    assert signed is not None
    document = source()
    assert document is not None and document.body is signed.token and document.etag == signed.etag
    assert document.media_type == MEDIA_TYPE
    assert document.cache_control == f"public, max-age={service.settings.status_list.ttl}"
    clock.advance(service.settings.status_list.lifetime // 2 + 1)
    assert source() is None  # due for re-signing: not served from the cache
    assert "/statuslists/1" not in document_sources(service)  # only the configured lists


def test_status_list_http_route_and_cached_bytes_same_response(server: Any) -> None:
    """The first GET goes through the route (builds the token), the next ones are answered
    from cached bytes before the router: same status, body and headers; other methods 405."""
    import httpx

    with httpx.Client(base_url=server.url) as http:
        first, second = http.get("/statuslists/0"), http.get("/statuslists/0")
        assert first.status_code == second.status_code == 200
        assert first.content == second.content
        for name in ("etag", "cache-control", "content-type", "content-length"):
            assert first.headers[name] == second.headers[name], name
        assert http.get("/statuslists/0", headers={"If-None-Match": first.headers["etag"]}).status_code == 304
        refused = http.post("/statuslists/0")
        assert refused.status_code == 405 and refused.json()["code"] == "method_not_allowed"
