"""Fuzz targets and input strategies, shared by the test suite and ``scripts/fuzz.py``.

The property (issue 8, item 4): every input either verifies or raises the project's
own error type (``VerificationError`` for the pure verifiers, ``ProblemError`` for the
key proof); never another exception. A target returns normally in both cases and lets
anything else escape, which is the failure the suite and the runner look for.

Inputs are plain random data and, mostly, mutations of genuine evidence: the real
device vectors in ../shared/vectors when present, and synthetic ones built here, so the
mutations reach the deep parts of each parser (past the first length check).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives import serialization
from hypothesis import strategies as st

from attester.errors import ProblemError
from attester.keyproof import verify_key_proof
from platform_verifiers.anchors import TrustAnchor
from platform_verifiers.android import (
    AndroidPolicy,
    SecurityLevel,
    google_hardware_roots,
    parse_key_description,
    verify_android_attestation,
)
from platform_verifiers.android.certs import decode_certificate
from platform_verifiers.android.pem import pem_certificates
from platform_verifiers.anchors import load_anchor
from platform_verifiers.apple import (
    apple_app_attest_roots,
    apple_receipt_roots,
    parse_assertion,
    parse_attestation_object,
    verify_assertion,
    verify_attestation,
    verify_receipt,
)
from platform_verifiers.errors import VerificationError

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors"
FUZZ_NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
APP_ID = "TEAM123456.com.example.wallet"
AUDIENCE = "https://attester.test"
CHALLENGE = "fuzz-challenge-0123456789abcdefghijklmnopqrstuvwxyzABCDEF"
# Every policy rule switched on (matching the synthetic chain, which therefore passes):
# the fuzzed chains exercise the policy checks too.
STRICT_POLICY = AndroidPolicy(
    min_security_level=SecurityLevel.TRUSTED_ENVIRONMENT,
    package_names=frozenset({"com.example.wallet"}),
    signer_digests=frozenset({hashlib.sha256(b"example signing certificate").digest()}),
    min_os_patch_level=202501,
)


# -- seeds -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Seeds:
    chains: tuple[tuple[bytes, ...], ...]
    certificates: tuple[bytes, ...]
    key_descriptions: tuple[bytes, ...]
    attestations: tuple[bytes, ...]
    assertions: tuple[bytes, ...]
    key_proof: str
    key_proof_jwk: dict[str, str]
    android_anchors: tuple[TrustAnchor, ...]
    apple_anchors: tuple[TrustAnchor, ...]
    apple_public_key: bytes
    apple_key_id: bytes
    receipts: tuple[bytes, ...]
    receipt_anchors: tuple[TrustAnchor, ...]


def _real_android_chains() -> list[tuple[bytes, ...]]:
    folder = VECTORS / "android"
    if not folder.is_dir():
        return []
    return [tuple(pem_certificates(p.read_bytes())) for p in sorted(folder.glob("*.pem"))]


def _real_apple(kind: str) -> list[bytes]:
    folder = VECTORS / "apple"
    if not folder.is_dir():
        return []
    return [base64.b64decode(p.read_text()) for p in sorted(folder.glob(f"*_{kind}.b64"))]


@functools.cache
def seeds() -> Seeds:
    """Built once per process: synthetic evidence plus the real vectors when present."""
    # Imported here: the synthetic builders are test helpers, needed only once seeding.
    from tests.android.synth import make_chain
    from tests.apple.receipt_synth import make_receipt, make_receipt_pki
    from tests.apple.synth import make_assertion, make_attestation, make_test_root
    from tests.support import make_key_proof, new_instance_key, public_jwk

    synth = make_chain(rkp=True)
    chains = [tuple(synth.chain), *_real_android_chains()]
    certificates = sorted({der for chain in chains for der in chain})
    key_descriptions: list[bytes] = []
    for chain in chains:
        try:
            key_descriptions.extend(decode_certificate(chain[0], 0).key_descriptions)
        except VerificationError:
            pass
    root = make_test_root()
    client_data_hash = hashlib.sha256(b"fuzz").digest()
    attestation, key_id, device_key = make_attestation(
        root_key=root.key,
        root_cert=root.cert,
        client_data_hash=client_data_hash,
        app_id=APP_ID,
        environment="production",
        now=FUZZ_NOW,
    )
    assertion = make_assertion(
        device_key, client_data_hash=client_data_hash, app_id=APP_ID, counter=5
    )
    instance = new_instance_key()
    pki = make_receipt_pki()
    receipts = [
        make_receipt(pki, app_id=APP_ID, public_key=device_key.public_key(),
                     created=FUZZ_NOW - timedelta(minutes=1), signed_attributes=attributes)
        for attributes in (False, True)
    ]
    receipts += [cbor2.loads(a)["attStmt"]["receipt"] for a in _real_apple("attestation")]
    return Seeds(
        chains=tuple(chains),
        certificates=tuple(certificates),
        key_descriptions=tuple(key_descriptions),
        attestations=(attestation, *_real_apple("attestation")),
        assertions=(assertion, *_real_apple("assertion")),
        key_proof=make_key_proof(
            instance, challenge=CHALLENGE, aud=AUDIENCE, iat=int(FUZZ_NOW.timestamp())
        ),
        key_proof_jwk=public_jwk(instance),
        android_anchors=(*google_hardware_roots(), synth.anchor),
        apple_anchors=(*apple_app_attest_roots(), root.anchor),
        apple_key_id=key_id,
        apple_public_key=device_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        ),
        receipts=tuple(receipts),
        receipt_anchors=(*apple_receipt_roots(), load_anchor("fuzz receipt root", pki.root_pem,
                                                             source="test")),
    )


# -- mutation strategies -----------------------------------------------------------------
_EDIT = st.tuples(
    st.sampled_from(("flip", "set", "insert", "delete", "truncate", "duplicate")),
    st.integers(min_value=0, max_value=1 << 16),
    st.integers(min_value=0, max_value=255),
)


def _apply(data: bytes, edits: Sequence[tuple[str, int, int]]) -> bytes:
    buffer = bytearray(data)
    for op, where, value in edits:
        if not buffer:
            buffer.append(value)
            continue
        i = where % len(buffer)
        if op == "flip":
            buffer[i] ^= 1 << (value % 8)
        elif op == "set":
            buffer[i] = value
        elif op == "insert":
            buffer.insert(i, value)
        elif op == "delete":
            del buffer[i]
        elif op == "truncate":
            del buffer[i:]
        else:  # duplicate a slice, as a repeated TLV would
            buffer[i:i] = buffer[i : i + 1 + value]
    return bytes(buffer)


def mutated(pool: Callable[[], Sequence[bytes]], *, max_edits: int = 6) -> st.SearchStrategy[bytes]:
    """Genuine bytes from ``pool()`` with a few random edits (or none)."""
    return st.builds(
        _apply,
        st.integers(min_value=0).map(lambda i: pool()[i % len(pool())]),
        st.lists(_EDIT, max_size=max_edits),
    )


def blob(pool: Callable[[], Sequence[bytes]], *, max_size: int = 4096) -> st.SearchStrategy[bytes]:
    """Mostly mutations of genuine inputs, sometimes plain random bytes."""
    return st.one_of(mutated(pool), mutated(pool), mutated(pool), st.binary(max_size=max_size))


def chain_inputs() -> st.SearchStrategy[list[bytes]]:
    """A real or synthetic chain with one or two certificates mutated, dropped or repeated."""

    def build(
        index: int, edits: list[tuple[int, list[tuple[str, int, int]]]], shape: int
    ) -> list[bytes]:
        chain = list(seeds().chains[index % len(seeds().chains)])
        for position, changes in edits:
            chain[position % len(chain)] = _apply(chain[position % len(chain)], changes)
        if shape == 1 and len(chain) > 1:
            del chain[1]
        elif shape == 2:
            chain.insert(1, chain[0])
        elif shape == 3:
            chain.reverse()
        return chain

    return st.builds(
        build,
        st.integers(min_value=0),
        st.lists(st.tuples(st.integers(0, 9), st.lists(_EDIT, min_size=1, max_size=4)), max_size=2),
        st.integers(0, 6),
    )


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def key_proof_inputs() -> st.SearchStrategy[str]:
    """Mutated genuine key proofs, JWS-shaped tokens with random members, and junk text."""
    header_keys = st.sampled_from(("alg", "typ", "crit", "jwk", "kid", "b64"))
    payload_keys = st.sampled_from(("aud", "challenge", "iat", "exp", "nonce"))

    def token(header: dict[str, Any], payload: dict[str, Any], signature: bytes) -> str:
        parts = (
            json.dumps(header, default=str).encode(),
            json.dumps(payload, default=str).encode(),
        )
        return ".".join((*(_b64url(p) for p in parts), _b64url(signature)))

    structured = st.builds(
        token,
        st.dictionaries(header_keys, _JSON, max_size=4).map(lambda h: {"alg": "ES256", **h}),
        st.dictionaries(payload_keys, _JSON, max_size=4),
        st.binary(min_size=0, max_size=80),
    )
    genuine = mutated(lambda: (seeds().key_proof.encode(),), max_edits=4).map(
        lambda b: b.decode("latin-1")
    )
    return st.one_of(genuine, genuine, structured, st.text(max_size=300))


# -- targets -----------------------------------------------------------------------------
def key_description_target(data: bytes) -> None:
    try:
        parse_key_description(data)
    except VerificationError:
        pass


def certificate_target(data: bytes) -> None:
    try:
        decode_certificate(data, 0)
    except VerificationError:
        pass


def android_chain_target(chain: list[bytes]) -> None:
    s = seeds()
    try:
        verify_android_attestation(
            chain=chain,
            challenge=b"challenge",
            policy=STRICT_POLICY,
            anchors=s.android_anchors,
            revocation=None,
            now=FUZZ_NOW,
        )
    except VerificationError:
        pass


def apple_attestation_target(data: bytes) -> None:
    s = seeds()
    try:
        parse_attestation_object(data)
        verify_attestation(
            attestation_object=data,
            key_id=s.apple_key_id,
            client_data_hash=hashlib.sha256(b"fuzz").digest(),
            app_ids=[APP_ID],
            environment="production",
            anchors=s.apple_anchors,
            now=FUZZ_NOW,
        )
    except VerificationError:
        pass


def apple_assertion_target(data: bytes) -> None:
    s = seeds()
    try:
        parse_assertion(data)
        verify_assertion(
            assertion=data,
            public_key=s.apple_public_key,
            client_data_hash=hashlib.sha256(b"fuzz").digest(),
            app_ids=[APP_ID],
            previous_counter=1,
        )
    except VerificationError:
        pass


def apple_receipt_target(data: bytes) -> None:
    s = seeds()
    try:
        verify_receipt(
            data, anchors=s.receipt_anchors, app_id=APP_ID, public_key=s.apple_public_key,
            now=FUZZ_NOW,
        )
    except VerificationError:
        pass


def key_proof_target(token: str) -> None:
    try:
        verify_key_proof(
            token,
            jwk=seeds().key_proof_jwk,
            challenge=CHALLENGE,
            audience=AUDIENCE,
            now=FUZZ_NOW,
            max_age=timedelta(seconds=300),
            skew=timedelta(seconds=60),
        )
    except ProblemError:
        pass


# name -> (target, strategy); the test module and the runner both iterate over this.
TARGETS: dict[str, tuple[Callable[[Any], None], Callable[[], st.SearchStrategy[Any]]]] = {
    "key_description": (key_description_target, lambda: blob(lambda: seeds().key_descriptions)),
    "certificate": (certificate_target, lambda: blob(lambda: seeds().certificates)),
    "android_chain": (android_chain_target, chain_inputs),
    "apple_attestation": (apple_attestation_target, lambda: blob(lambda: seeds().attestations)),
    "apple_assertion": (apple_assertion_target, lambda: blob(lambda: seeds().assertions)),
    "apple_receipt": (apple_receipt_target, lambda: blob(lambda: seeds().receipts)),
    "key_proof": (key_proof_target, key_proof_inputs),
}


# -- the same inputs without hypothesis (scripts/fuzz.py --engine random) ----------------
# Hypothesis costs more per example than most targets; for millions of inputs the runner
# draws from the same pools with the same edit operators using ``random`` directly.
_OPS = ("flip", "set", "insert", "delete", "truncate", "duplicate")


def _random_edits(rng: random.Random, max_edits: int = 6) -> list[tuple[str, int, int]]:
    return [
        (rng.choice(_OPS), rng.randrange(1 << 16), rng.randrange(256))
        for _ in range(rng.randrange(max_edits + 1))
    ]


def _random_blob(rng: random.Random, pool: Sequence[bytes]) -> bytes:
    if rng.random() < 0.25:
        return rng.randbytes(rng.randrange(4097))
    return _apply(rng.choice(pool), _random_edits(rng))


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice((0, -1, 1 << 70, rng.randrange(-(1 << 40), 1 << 40)))
    if kind == 3:
        return rng.choice((0.5, float("inf"), 1e308))
    if kind == 4:
        return rng.randbytes(rng.randrange(12)).decode("latin-1")
    if kind == 5:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {str(rng.randrange(6)): _random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def random_input(name: str, rng: random.Random) -> Any:
    """One input for target ``name``, drawn like the hypothesis strategies above."""
    s = seeds()
    if name == "key_description":
        return _random_blob(rng, s.key_descriptions)
    if name == "certificate":
        return _random_blob(rng, s.certificates)
    if name == "apple_attestation":
        return _random_blob(rng, s.attestations)
    if name == "apple_assertion":
        return _random_blob(rng, s.assertions)
    if name == "apple_receipt":
        return _random_blob(rng, s.receipts)
    if name == "android_chain":
        chain = list(rng.choice(s.chains))
        for _ in range(rng.randrange(3)):
            at = rng.randrange(len(chain))
            chain[at] = _apply(chain[at], _random_edits(rng, 4) or [("flip", 0, 0)])
        shape = rng.randrange(7)
        if shape == 1 and len(chain) > 1:
            del chain[1]
        elif shape == 2:
            chain.insert(1, chain[0])
        elif shape == 3:
            chain.reverse()
        return chain
    if name == "key_proof":
        roll = rng.random()
        if roll < 0.5:
            return _apply(s.key_proof.encode(), _random_edits(rng, 4)).decode("latin-1")
        if roll < 0.85:
            header = {
                "alg": "ES256",
                **{
                    k: _random_json(rng)
                    for k in rng.sample(("typ", "crit", "jwk", "kid"), rng.randrange(3))
                },
            }
            payload = {
                k: _random_json(rng)
                for k in rng.sample(("aud", "challenge", "iat", "exp"), rng.randrange(5))
            }
            parts = (
                json.dumps(header, default=str).encode(),
                json.dumps(payload, default=str).encode(),
            )
            return ".".join(
                (*(_b64url(p) for p in parts), _b64url(rng.randbytes(rng.randrange(80))))
            )
        return rng.randbytes(rng.randrange(300)).decode("latin-1")
    raise KeyError(name)
