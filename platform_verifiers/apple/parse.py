"""Parse App Attest attestation objects and assertions into frozen dataclasses.

Nothing here decides whether evidence is genuine; it only turns bytes into values
(``verify.py`` checks them). No cbor2 object leaves this module.

References:
- Apple, "Validating apps that connect to your server":
  https://developer.apple.com/documentation/devicecheck/validating-apps-that-connect-to-your-server
- W3C WebAuthn Level 2, authenticator data layout (App Attest reuses it):
  https://www.w3.org/TR/webauthn-2/#sctn-authenticator-data
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..cbor import decode_first_cbor_item as _decode_first_cbor_item
from ..cbor import decode_single_cbor_item as _decode_single_cbor_item
from ..errors import VerificationError

APP_ATTEST_FORMAT = "apple-appattest"

#: Real attestation objects are about 5.5 KiB (two certificates and a ~3.7 KiB receipt);
#: 64 KiB leaves room for growth while bounding the work an anonymous caller can cause.
MAX_ATTESTATION_BYTES = 64 * 1024
#: Real assertions are under 200 bytes; newer iOS appends extension data, so allow plenty.
MAX_ASSERTION_BYTES = 16 * 1024

_RP_ID_HASH_LEN = 32
_HEADER_LEN = _RP_ID_HASH_LEN + 1 + 4  # rpIdHash, flags, signCount
_AAGUID_LEN = 16


@dataclass(frozen=True)
class CoseKey:
    """A COSE_Key (RFC 9052 section 7) as found in attested credential data.

    App Attest uses EC2 (kty 2), ES256 (alg -7), P-256 (crv 1); other values are kept as
    seen so a verifier can refuse them with a precise reason.
    """

    kty: int | None
    alg: int | None
    crv: int | None
    x: bytes | None
    y: bytes | None
    raw: bytes

    @property
    def uncompressed_point(self) -> bytes | None:
        """``0x04 ‖ x ‖ y`` (SEC 1 uncompressed point) when both coordinates are present."""
        if self.x is None or self.y is None:
            return None
        return b"\x04" + self.x + self.y


@dataclass(frozen=True)
class AuthenticatorData:
    """WebAuthn authenticator data as App Attest produces it.

    ``aaguid``, ``credential_id`` and ``credential_public_key`` are set for attestations
    and ``None`` for assertions (which carry no attested credential data).
    ``extensions`` holds every byte after the parsed fields: Apple appends CBOR extension
    data there even when the ED flag is clear (iOS 27), so it is kept raw, never interpreted.
    """

    raw: bytes
    rp_id_hash: bytes
    flags: int
    counter: int
    aaguid: bytes | None
    credential_id: bytes | None
    credential_public_key: CoseKey | None
    extensions: bytes


@dataclass(frozen=True)
class AttestationObject:
    """The decoded ``{fmt, attStmt: {x5c, receipt}, authData}`` map."""

    fmt: str
    x5c: tuple[bytes, ...]
    receipt: bytes
    auth_data: AuthenticatorData


@dataclass(frozen=True)
class Assertion:
    """The decoded ``{signature, authenticatorData}`` map."""

    signature: bytes
    auth_data: AuthenticatorData


def _cose_int(key_map: dict[Any, Any], label: int) -> int | None:
    value = key_map.get(label)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _cose_bytes(key_map: dict[Any, Any], label: int) -> bytes | None:
    value = key_map.get(label)
    return value if isinstance(value, bytes) else None


def _parse_cose_key(data: bytes, *, code: str) -> tuple[CoseKey, int]:
    """Decode the COSE key at the start of ``data``; return it and the bytes it used."""
    item, used = _decode_first_cbor_item(data, code=code, what="credential public key")
    if not isinstance(item, dict):
        raise VerificationError(code, "credential public key is not a COSE map")
    key = CoseKey(
        kty=_cose_int(item, 1),
        alg=_cose_int(item, 3),
        crv=_cose_int(item, -1),
        x=_cose_bytes(item, -2),
        y=_cose_bytes(item, -3),
        raw=data[:used],
    )
    return key, used


def parse_authenticator_data(data: bytes, *, with_credential: bool, code: str) -> AuthenticatorData:
    """Parse authenticator data (WebAuthn section 6.1), tolerating trailing bytes.

    The flags byte is not trusted: App Attest assertions set the attested-credential-data
    flag (0x40) yet carry no credential data, and attestations append extension data with
    the ED flag clear. So the caller says whether credential data is present
    (``with_credential``: attestations yes, assertions no) and whatever follows the parsed
    fields is returned in ``extensions``.
    """
    if len(data) < _HEADER_LEN:
        raise VerificationError(code, "authenticator data is too short", length=len(data))
    rp_id_hash = data[:_RP_ID_HASH_LEN]
    flags = data[_RP_ID_HASH_LEN]
    counter = int.from_bytes(data[_RP_ID_HASH_LEN + 1 : _HEADER_LEN], "big")
    offset = _HEADER_LEN
    aaguid: bytes | None = None
    credential_id: bytes | None = None
    cose_key: CoseKey | None = None
    if with_credential:
        if len(data) < offset + _AAGUID_LEN + 2:
            raise VerificationError(code, "attested credential data is truncated")
        aaguid = data[offset : offset + _AAGUID_LEN]
        offset += _AAGUID_LEN
        id_len = int.from_bytes(data[offset : offset + 2], "big")
        offset += 2
        if len(data) < offset + id_len:
            raise VerificationError(code, "credential id is truncated")
        credential_id = data[offset : offset + id_len]
        offset += id_len
        cose_key, used = _parse_cose_key(data[offset:], code=code)
        offset += used
    return AuthenticatorData(
        raw=data,
        rp_id_hash=rp_id_hash,
        flags=flags,
        counter=counter,
        aaguid=aaguid,
        credential_id=credential_id,
        credential_public_key=cose_key,
        extensions=data[offset:],
    )


def parse_attestation_object(data: bytes) -> AttestationObject:
    """Decode an App Attest attestation object.

    Error codes: ``attestation_too_large``, ``attestation_malformed``,
    ``attestation_format_unsupported``.
    """
    if len(data) > MAX_ATTESTATION_BYTES:
        raise VerificationError(
            "attestation_too_large",
            "attestation object is too large",
            length=len(data),
            limit=MAX_ATTESTATION_BYTES,
        )
    code = "attestation_malformed"
    item = _decode_single_cbor_item(data, code=code, what="attestation object")
    if not isinstance(item, dict):
        raise VerificationError(code, "attestation object is not a CBOR map")
    fmt = item.get("fmt")
    if not isinstance(fmt, str):
        raise VerificationError(code, "attestation object has no fmt string")
    if fmt != APP_ATTEST_FORMAT:
        # the format name is an ASCII identifier, short and safe to echo back
        raise VerificationError(
            "attestation_format_unsupported",
            "attestation format is not apple-appattest",
            fmt=fmt[:32],
        )
    att_stmt = item.get("attStmt")
    if not isinstance(att_stmt, dict):
        raise VerificationError(code, "attStmt is missing or not a map")
    x5c = att_stmt.get("x5c")
    if not isinstance(x5c, list) or not x5c or not all(isinstance(c, bytes) for c in x5c):
        raise VerificationError(code, "attStmt.x5c is not a non-empty array of byte strings")
    receipt = att_stmt.get("receipt")
    if not isinstance(receipt, bytes):
        raise VerificationError(code, "attStmt.receipt is missing or not a byte string")
    auth_data_bytes = item.get("authData")
    if not isinstance(auth_data_bytes, bytes):
        raise VerificationError(code, "authData is missing or not a byte string")
    auth_data = parse_authenticator_data(auth_data_bytes, with_credential=True, code=code)
    return AttestationObject(fmt=fmt, x5c=tuple(x5c), receipt=receipt, auth_data=auth_data)


def parse_assertion(data: bytes) -> Assertion:
    """Decode an App Attest assertion ``{signature, authenticatorData}``.

    Unknown map keys and bytes after the 37-byte authenticator data header are tolerated
    (newer iOS versions append extension data). Error code: ``assertion_malformed``.
    """
    code = "assertion_malformed"
    if len(data) > MAX_ASSERTION_BYTES:
        raise VerificationError(
            code, "assertion is too large", length=len(data), limit=MAX_ASSERTION_BYTES
        )
    item = _decode_single_cbor_item(data, code=code, what="assertion")
    if not isinstance(item, dict):
        raise VerificationError(code, "assertion is not a CBOR map")
    signature = item.get("signature")
    auth_data_bytes = item.get("authenticatorData")
    if not isinstance(signature, bytes) or not isinstance(auth_data_bytes, bytes):
        raise VerificationError(code, "assertion lacks signature or authenticatorData bytes")
    return Assertion(
        signature=signature,
        auth_data=parse_authenticator_data(auth_data_bytes, with_credential=False, code=code),
    )
