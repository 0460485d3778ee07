"""Verify App Attest attestations and assertions: Apple's documented steps, one check each.

Apple, "Validating apps that connect to your server":
https://developer.apple.com/documentation/devicecheck/validating-apps-that-connect-to-your-server
(sections "Verify the attestation" and "Verify the assertion").

Both functions are pure: evidence, expected values, trust anchors and ``now`` come in as
arguments; nothing reads the clock, the network, the environment or a global.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..anchors import TrustAnchor
from ..errors import VerificationError
from ..linkcache import VerifiedLinkCache
from ._asn1 import APP_ATTEST_NONCE_OID, decode_app_attest_nonce
from .chain import load_chain, verify_chain
from .parse import AuthenticatorData, parse_assertion, parse_attestation_object

Environment = Literal["development", "production"]

#: aaguid values per App Attest environment (TestFlight builds use production).
AAGUIDS: dict[str, bytes] = {
    "development": b"appattestdevelop",
    "production": b"appattest" + b"\x00" * 7,
}


@dataclass(frozen=True)
class AppAttestation:
    """What a verified attestation establishes; store ``public_key``, ``counter``, ``receipt``."""

    key_id: bytes
    #: the App Attest key as an uncompressed P-256 point (``0x04 ‖ x ‖ y``)
    public_key: bytes
    counter: int
    receipt: bytes
    app_id: str
    environment: Environment
    auth_data: AuthenticatorData
    #: DER certificates as received (leaf first), for audit and display
    x5c: tuple[bytes, ...]
    #: the name of the trust anchor the chain ends at (a renewal checks it is still trusted)
    root_anchor: str = ""

    @property
    def public_key_der(self) -> bytes:
        """The App Attest key as DER SubjectPublicKeyInfo."""
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), self.public_key)
        return key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@dataclass(frozen=True)
class AppAssertion:
    """What a verified assertion establishes; store ``counter`` (compare-and-set)."""

    counter: int
    app_id: str
    auth_data: AuthenticatorData


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")


def _require_app_ids(app_ids: Sequence[str]) -> None:
    # a bare str is a Sequence[str] too; treating "ABC.x" as characters would fail open-ish
    if isinstance(app_ids, str) or not app_ids:
        raise ValueError("app_ids must be a non-empty sequence of App IDs")


def _matching_app_id(rp_id_hash: bytes, app_ids: Sequence[str]) -> str:
    for app_id in app_ids:
        if hmac.compare_digest(rp_id_hash, hashlib.sha256(app_id.encode("utf-8")).digest()):
            return app_id
    raise VerificationError(
        "app_id_mismatch", "rpIdHash does not match any configured App ID", app_ids=list(app_ids)
    )


def _uncompressed_point(cert: x509.Certificate) -> bytes:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise VerificationError(
            "attestation_malformed", "the credential certificate key is not EC P-256"
        )
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


_NONCE_OID = x509.ObjectIdentifier(APP_ATTEST_NONCE_OID)


def _nonce_from_extension(cert: x509.Certificate) -> bytes:
    try:
        extension = cert.extensions.get_extension_for_oid(_NONCE_OID)
    except x509.ExtensionNotFound as exc:
        raise VerificationError(
            "nonce_extension_missing", "the credential certificate has no nonce extension"
        ) from exc
    except (ValueError, x509.DuplicateExtension) as exc:  # duplicate or unparsable extensions
        raise VerificationError(
            "attestation_malformed", "the credential certificate extensions are malformed"
        ) from exc
    value = extension.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise VerificationError("nonce_extension_malformed", "the nonce extension is malformed")
    try:
        return decode_app_attest_nonce(value.value)
    except ValueError as exc:
        raise VerificationError(
            "nonce_extension_malformed", "the nonce extension is malformed"
        ) from exc


def verify_attestation(
    *,
    attestation_object: bytes,
    key_id: bytes,
    client_data_hash: bytes,
    app_ids: Sequence[str],
    environment: Environment,
    anchors: Sequence[TrustAnchor],
    now: datetime,
    verified_cache: VerifiedLinkCache | None = None,
) -> AppAttestation:
    """Verify an App Attest attestation object, following Apple's steps in order.

    ``client_data_hash`` is what the app passed to ``attestKey`` (normally SHA-256 of the
    client data; any length is accepted because Apple's own samples pass the raw challenge).
    ``app_ids`` lists acceptable ``TEAMID.bundle.id`` values. ``now`` must be timezone-aware.
    ``verified_cache`` may skip re-verifying the signatures of links above the leaf.

    Spec: https://developer.apple.com/documentation/devicecheck/validating-apps-that-connect-to-your-server

    Raises ``VerificationError`` with one of: ``attestation_too_large``,
    ``attestation_malformed``, ``attestation_format_unsupported``, ``certificate_expired``,
    ``certificate_not_yet_valid``, ``chain_untrusted``, ``chain_signature_invalid``,
    ``nonce_extension_missing``, ``nonce_extension_malformed``, ``nonce_mismatch``,
    ``key_id_mismatch``, ``app_id_mismatch``, ``counter_not_zero``, ``environment_mismatch``,
    ``credential_id_mismatch``. Raises ``ValueError`` for caller mistakes (naive ``now``,
    no anchors, no App IDs, unknown environment).
    """
    _require_aware(now)
    _require_app_ids(app_ids)
    if environment not in AAGUIDS:
        raise ValueError("environment must be 'development' or 'production'")
    attestation = parse_attestation_object(attestation_object)
    auth_data = attestation.auth_data

    # Step 1: x5c (credCert first, then the intermediate) chains to Apple's root, valid now.
    certs = load_chain(attestation.x5c, verified_cache)
    anchor = verify_chain(
        certs, anchors=anchors, now=now, verified_cache=verified_cache, ders=attestation.x5c
    )
    cred_cert = certs[0]

    # Steps 2-4: nonce = SHA-256(authData ‖ clientDataHash) equals the octet string inside
    # the credCert extension 1.2.840.113635.100.8.2 (decoded as ASN.1).
    nonce = hashlib.sha256(auth_data.raw + client_data_hash).digest()
    if not hmac.compare_digest(nonce, _nonce_from_extension(cred_cert)):
        raise VerificationError(
            "nonce_mismatch", "the certificate nonce does not match authData and clientDataHash"
        )

    # Step 5: SHA-256 of credCert's public key (X9.62 uncompressed point) is the key id.
    public_key = _uncompressed_point(cred_cert)
    if not hmac.compare_digest(hashlib.sha256(public_key).digest(), key_id):
        raise VerificationError("key_id_mismatch", "the key id is not the credential key's hash")

    # Step 6: rpIdHash is SHA-256 of the App ID (TEAMID.bundle.id).
    app_id = _matching_app_id(auth_data.rp_id_hash, app_ids)

    # Step 7: a freshly attested key has never signed: counter is 0.
    if auth_data.counter != 0:
        raise VerificationError(
            "counter_not_zero", "attestation counter is not 0", counter=auth_data.counter
        )

    # Step 8: aaguid names the environment the app was built for.
    if auth_data.aaguid != AAGUIDS[environment]:
        raise VerificationError(
            "environment_mismatch",
            "aaguid does not match the configured App Attest environment",
            required=environment,
        )

    # Step 9: credentialId is the key id.
    if auth_data.credential_id is None or not hmac.compare_digest(auth_data.credential_id, key_id):
        raise VerificationError("credential_id_mismatch", "credentialId is not the key id")

    return AppAttestation(
        key_id=key_id,
        public_key=public_key,
        counter=auth_data.counter,
        receipt=attestation.receipt,
        app_id=app_id,
        environment=environment,
        auth_data=auth_data,
        x5c=attestation.x5c,
        root_anchor=anchor.name,
    )


def load_public_key(public_key: bytes) -> ec.EllipticCurvePublicKey:
    """Load a P-256 key from an uncompressed point (65 bytes) or DER SubjectPublicKeyInfo."""
    try:
        if len(public_key) == 65 and public_key[0] == 0x04:
            return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public_key)
        key = serialization.load_der_public_key(public_key)
    except ValueError as exc:
        raise ValueError("public_key is neither an uncompressed P-256 point nor SPKI DER") from exc
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise ValueError("public_key is not an EC P-256 key")


def verify_assertion(
    *,
    assertion: bytes,
    public_key: bytes,
    client_data_hash: bytes,
    app_ids: Sequence[str],
    previous_counter: int,
) -> AppAssertion:
    """Verify an App Attest assertion made with a previously attested key.

    ``public_key`` is the stored App Attest key (uncompressed P-256 point or SPKI DER);
    ``client_data_hash`` is SHA-256 of the client data the app signed; ``previous_counter``
    is the stored counter. The caller must store the returned ``counter`` with a
    compare-and-set so two concurrent assertions cannot both pass.

    Spec: https://developer.apple.com/documentation/devicecheck/validating-apps-that-connect-to-your-server#Verify-the-assertion

    Raises ``VerificationError`` with one of: ``assertion_malformed``,
    ``assertion_signature_invalid``, ``app_id_mismatch``, ``counter_not_increasing``.
    """
    _require_app_ids(app_ids)
    key = load_public_key(public_key)
    parsed = parse_assertion(assertion)
    auth_data = parsed.auth_data

    # Steps 1-2: nonce = SHA-256(authenticatorData ‖ clientDataHash).
    nonce = hashlib.sha256(auth_data.raw + client_data_hash).digest()

    # Step 3: the signature is ECDSA P-256 with SHA-256 over the nonce (so the nonce is
    # hashed once more inside ECDSA; that double hash is how the device signs).
    try:
        key.verify(parsed.signature, nonce, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise VerificationError(
            "assertion_signature_invalid", "the assertion signature does not verify"
        ) from exc

    # Step 4: rpIdHash is SHA-256 of the App ID.
    app_id = _matching_app_id(auth_data.rp_id_hash, app_ids)

    # Step 5: the counter strictly increases; equal means a replayed assertion.
    if auth_data.counter <= previous_counter:
        raise VerificationError(
            "counter_not_increasing",
            "assertion counter is not greater than the stored counter",
            counter=auth_data.counter,
            previous_counter=previous_counter,
        )
    return AppAssertion(counter=auth_data.counter, app_id=app_id, auth_data=auth_data)
