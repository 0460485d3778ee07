"""App Attest receipts: verify the PKCS#7 (CMS SignedData) signature chain and read the fields.

Apple, "Assessing fraud risk", "Verify the receipt":
https://developer.apple.com/documentation/devicecheck/assessing-fraud-risk

1. The receipt is a PKCS#7 container (RFC 5652 SignedData) signed by Apple's
   "Application Attestation Fraud Receipt Signing" certificate, which chains through
   "Apple Application Integration CA 5 - G1" to **Apple Root CA - G3**.
2. Its payload is an ASN.1 SET of ``SEQUENCE { type INTEGER, version INTEGER, value OCTET
   STRING }``. Fields: 2 App ID, 3 attested public key (the credential certificate, DER),
   4 client hash, 5 token, 6 receipt type (``ATTEST`` / ``RECEIPT``), 12 creation time,
   17 risk metric (``RECEIPT`` only), 19 not-before, 21 expiration time.
3. The App ID must be the app's, the attested key the stored App Attest key, and the receipt
   must be valid now; a receipt just received from Apple should also be recent.

Apple emits the container in BER with indefinite lengths, which pyca and pyasn1's
schema-driven decoder reject, so a small BER reader (X.690 section 8.1) decodes the
structure; the certificates and the SignerInfo inside are definite-length DER.
The module is pure: ``now``, the anchors and the expected values are arguments.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..anchors import TrustAnchor
from ..errors import VerificationError
from .chain import verify_chain

MAX_RECEIPT_BYTES = 16 * 1024
_MAX_DEPTH = 12

OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
OID_DATA = "1.2.840.113549.1.7.1"
OID_SHA256 = "2.16.840.1.101.3.4.2.1"
OID_ECDSA_SHA256 = "1.2.840.10045.4.3.2"
OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
#: Apple's marker extension on the receipt signing certificate (seen on every real receipt).
#: Apple Root CA - G3 signs far more than receipts, so the marker is what makes a signer
#: certificate a *receipt* signer.
OID_RECEIPT_SIGNER_MARKER = "1.2.840.113635.100.12.15"

ReceiptType = Literal["ATTEST", "RECEIPT"]
RECEIPT_TYPES: frozenset[str] = frozenset({"ATTEST", "RECEIPT"})

#: Every ``VerificationError.code`` this module raises (besides the chain's codes).
RECEIPT_ERROR_CODES: frozenset[str] = frozenset(
    {
        "receipt_malformed",
        "receipt_signature_invalid",
        "receipt_signer_not_authorized",
        "receipt_app_id_mismatch",
        "receipt_key_mismatch",
        "receipt_type_unexpected",
        "receipt_not_yet_valid",
        "receipt_expired",
        "receipt_stale",
    }
)


def _malformed(why: str) -> VerificationError:
    return VerificationError("receipt_malformed", "the receipt is malformed", reason=why)


# -- a minimal BER reader (X.690 8.1) --------------------------------------------------


@dataclass(frozen=True)
class _Node:
    tag_class: int  # 0 universal, 2 context
    constructed: bool
    number: int
    raw: bytes  # the whole TLV (meaningful for definite lengths)
    content: bytes  # primitive content octets
    children: tuple[_Node, ...] = field(default=())
    definite: bool = True

    def octets(self) -> bytes:
        """An OCTET STRING's value; constructed (BER) strings are the concatenated chunks."""
        if not self.constructed:
            return self.content
        return b"".join(child.octets() for child in self.children)


def _read(data: bytes, pos: int, depth: int) -> tuple[_Node, int]:
    if depth > _MAX_DEPTH:
        raise _malformed("nesting too deep")
    if pos + 2 > len(data):
        raise _malformed("truncated")
    start = pos
    first = data[pos]
    pos += 1
    number = first & 0x1F
    if number == 0x1F:  # high tag number form
        number = 0
        while True:
            if pos >= len(data) or number > 1 << 24:
                raise _malformed("bad tag")
            byte = data[pos]
            pos += 1
            number = (number << 7) | (byte & 0x7F)
            if not byte & 0x80:
                break
    if pos >= len(data):
        raise _malformed("truncated")
    length_byte = data[pos]
    pos += 1
    constructed = bool(first & 0x20)
    if length_byte == 0x80:  # indefinite: children up to end-of-contents
        if not constructed:
            raise _malformed("indefinite primitive")
        children = []
        while True:
            if data[pos : pos + 2] == b"\x00\x00":
                pos += 2
                break
            child, pos = _read(data, pos, depth + 1)
            children.append(child)
        node = _Node(first >> 6, True, number, data[start:pos], b"", tuple(children), False)
        return node, pos
    if length_byte & 0x80:
        count = length_byte & 0x7F
        if count > 4 or pos + count > len(data):
            raise _malformed("bad length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    else:
        length = length_byte
    end = pos + length
    if end > len(data):
        raise _malformed("truncated")
    content = data[pos:end]
    children_list: list[_Node] = []
    if constructed:
        inner = pos
        while inner < end:
            child, inner = _read(data[:end], inner, depth + 1)
            children_list.append(child)
    return _Node(
        first >> 6, constructed, number, data[start:end], content, tuple(children_list)
    ), end


def _decode(data: bytes) -> _Node:
    node, end = _read(data, 0, 0)
    if end != len(data):
        raise _malformed("trailing bytes")
    return node


def _expect(node: _Node, *, tag_class: int = 0, number: int, constructed: bool) -> _Node:
    if (node.tag_class, node.number, node.constructed) != (tag_class, number, constructed):
        raise _malformed("unexpected element")
    return node


def _oid(node: _Node) -> str:
    _expect(node, number=6, constructed=False)
    body = node.content
    if not body or body[-1] & 0x80:
        raise _malformed("empty or unterminated OID")
    arcs: list[int] = []
    value = 0
    for byte in body:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def _integer(node: _Node) -> int:
    _expect(node, number=2, constructed=False)
    if not node.content:
        raise _malformed("empty INTEGER")
    return int.from_bytes(node.content, "big", signed=True)


# -- the receipt -----------------------------------------------------------------------


@dataclass(frozen=True)
class Receipt:
    """The payload fields of an App Attest receipt (Apple, "Assessing fraud risk")."""

    app_id: str
    #: the attested App Attest key as an uncompressed P-256 point (from field 3's certificate)
    public_key: bytes
    client_hash: bytes
    token: str
    receipt_type: str
    created_at: datetime
    not_before: datetime | None
    expires_at: datetime
    #: field 17: attested keys for this app on this device in the past 30 days (``RECEIPT`` only)
    risk_metric: int | None


@dataclass(frozen=True)
class _SignedReceipt:
    content: bytes
    certificates: tuple[x509.Certificate, ...]
    signer: x509.Certificate
    signature: bytes
    signed_attributes: bytes | None  # DER of the attributes as a SET, when present


def _time(value: bytes) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise _malformed("bad time field") from None
    if parsed.tzinfo is None:
        raise _malformed("time field without time zone")
    return parsed


def _parse_container(receipt: bytes) -> _SignedReceipt:
    if len(receipt) > MAX_RECEIPT_BYTES:
        raise _malformed("too large")
    top = _expect(_decode(receipt), number=16, constructed=True)
    if len(top.children) != 2 or _oid(top.children[0]) != OID_SIGNED_DATA:
        raise _malformed("not a SignedData container")
    wrapper = _expect(top.children[1], tag_class=2, number=0, constructed=True)
    if len(wrapper.children) != 1:
        raise _malformed("bad SignedData wrapper")
    signed = _expect(wrapper.children[0], number=16, constructed=True)
    parts = list(signed.children)
    if len(parts) < 4:
        raise _malformed("SignedData too short")
    _integer(parts[0])  # version: 1 on every receipt; not a security decision
    encap = _expect(parts[2], number=16, constructed=True)
    if len(encap.children) != 2 or _oid(encap.children[0]) != OID_DATA:
        raise _malformed("unexpected content type")
    content_wrapper = _expect(encap.children[1], tag_class=2, number=0, constructed=True)
    if len(content_wrapper.children) != 1:
        raise _malformed("bad content wrapper")
    content_node = content_wrapper.children[0]
    if content_node.tag_class != 0 or content_node.number != 4:
        raise _malformed("content is not an OCTET STRING")
    content = content_node.octets()
    certificates: list[x509.Certificate] = []
    rest = parts[3:]
    if rest and (rest[0].tag_class, rest[0].number) == (2, 0):
        for cert_node in rest[0].children:
            if not cert_node.definite:
                raise _malformed("indefinite certificate")
            certificates.append(_certificate(cert_node.raw))
        rest = rest[1:]
    if rest and (rest[0].tag_class, rest[0].number) == (2, 1):
        rest = rest[1:]  # CRLs: none on receipts; ignored like any CMS reader does
    if len(rest) != 1:
        raise _malformed("unexpected SignedData members")
    signer_infos = _expect(rest[0], number=17, constructed=True)
    if len(signer_infos.children) != 1:
        raise _malformed("exactly one signer expected")
    return _signer(signer_infos.children[0], content, tuple(certificates))


#: what pyca raises for a certificate or key it cannot read (InvalidVersion: not v1 or v3;
#: TypeError: a name attribute of a type it does not read as text)
_UNREADABLE = (ValueError, TypeError, x509.InvalidVersion, UnsupportedAlgorithm)


def _certificate(der: bytes) -> x509.Certificate:
    """A certificate of the container, its names read now: pyca reads them lazily, and
    the signer's match and the path compare them in Python (a broken one found there was
    an uncaught exception, found in review)."""
    try:
        certificate = x509.load_der_x509_certificate(der)
        certificate.issuer.public_bytes()
        certificate.subject.public_bytes()
    except _UNREADABLE:
        raise _malformed("unparsable certificate") from None
    return certificate


def _signer(
    info: _Node, content: bytes, certificates: tuple[x509.Certificate, ...]
) -> _SignedReceipt:
    _expect(info, number=16, constructed=True)
    items = list(info.children)
    if len(items) < 5:
        raise _malformed("SignerInfo too short")
    sid = _expect(items[1], number=16, constructed=True)  # IssuerAndSerialNumber
    if len(sid.children) != 2:
        raise _malformed("unsupported signer identifier")
    issuer_der, serial = sid.children[0].raw, _integer(sid.children[1])
    digest_algorithm = _expect(items[2], number=16, constructed=True)
    if not digest_algorithm.children or _oid(digest_algorithm.children[0]) != OID_SHA256:
        raise _malformed("digest algorithm is not SHA-256")
    index = 3
    signed_attributes: bytes | None = None
    if (items[index].tag_class, items[index].number) == (2, 0):
        attrs = items[index]
        if not attrs.definite:
            raise _malformed("indefinite signed attributes")
        digests = [
            a.children[1].children[0]
            for a in attrs.children
            if len(a.children) == 2
            and _oid(a.children[0]) == OID_MESSAGE_DIGEST
            and a.children[1].children
        ]
        if len(digests) != 1 or digests[0].octets() != hashlib.sha256(content).digest():
            raise VerificationError(
                "receipt_signature_invalid", "the receipt's message digest does not match"
            )
        # RFC 5652 5.4: the signature covers the attributes DER-encoded as a SET OF
        signed_attributes = b"\x31" + attrs.raw[1:]
        index += 1
    if len(items) < index + 2:
        raise _malformed("SignerInfo too short")
    signature_algorithm = _expect(items[index], number=16, constructed=True)
    if (
        not signature_algorithm.children
        or _oid(signature_algorithm.children[0]) != OID_ECDSA_SHA256
    ):
        raise _malformed("signature algorithm is not ECDSA with SHA-256")
    signature_node = items[index + 1]
    if signature_node.tag_class != 0 or signature_node.number != 4:
        raise _malformed("signature is not an OCTET STRING")
    signer = next(
        (
            c
            for c in certificates
            if c.serial_number == serial and c.issuer.public_bytes() == issuer_der
        ),
        None,
    )
    if signer is None:
        raise _malformed("the signer certificate is not in the receipt")
    return _SignedReceipt(
        content=content,
        certificates=certificates,
        signer=signer,
        signature=signature_node.octets(),
        signed_attributes=signed_attributes,
    )


def _path(signer: x509.Certificate, pool: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """Leaf first, then each issuer found in the container, up to a self-issued one."""
    path = [signer]
    while len(path) <= len(pool) and path[-1].issuer != path[-1].subject:
        issuer = next((c for c in pool if c.subject == path[-1].issuer and c not in path), None)
        if issuer is None:
            break
        path.append(issuer)
    return path


def parse_receipt_payload(content: bytes) -> Receipt:
    """Decode the payload SET into a :class:`Receipt` (no signature checks)."""
    payload = _expect(_decode(content), number=17, constructed=True)
    fields: dict[int, bytes] = {}
    for item in payload.children:
        _expect(item, number=16, constructed=True)
        if len(item.children) != 3:
            raise _malformed("bad field")
        number = _integer(item.children[0])
        _integer(item.children[1])  # field version
        value = _expect(item.children[2], number=4, constructed=item.children[2].constructed)
        if number in fields:
            raise _malformed("duplicate field")
        fields[number] = value.octets()
    for required in (2, 3, 6, 12, 21):
        if required not in fields:
            raise _malformed(f"field {required} missing")
    try:
        credential = x509.load_der_x509_certificate(fields[3])
        key = credential.public_key()
    except _UNREADABLE:
        raise _malformed("attested public key field is not a certificate") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise _malformed("attested key is not EC P-256")
    risk: int | None = None
    if 17 in fields:
        text = fields[17].decode("ascii", "replace")
        if not text.isdigit() or len(text) > 9:
            raise _malformed("risk metric is not a number")
        risk = int(text)
    try:
        app_id = fields[2].decode("utf-8")
        receipt_type = fields[6].decode("ascii")
        token = fields.get(5, b"").decode("ascii")
    except UnicodeDecodeError:
        raise _malformed("text field is not text") from None
    return Receipt(
        app_id=app_id,
        public_key=key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        ),
        client_hash=fields.get(4, b""),
        token=token,
        receipt_type=receipt_type,
        created_at=_time(fields[12]),
        not_before=_time(fields[19]) if 19 in fields else None,
        expires_at=_time(fields[21]),
        risk_metric=risk,
    )


def verify_receipt(
    receipt: bytes,
    *,
    anchors: Sequence[TrustAnchor],
    app_id: str,
    public_key: bytes,
    now: datetime,
    receipt_type: ReceiptType | None = None,
    max_age: timedelta | None = None,
    skew: timedelta = timedelta(seconds=60),
) -> Receipt:
    """Verify an App Attest receipt and return its fields.

    ``public_key`` is the stored App Attest key (uncompressed P-256 point). ``max_age``
    bounds ``now - creation time`` (Apple: a freshly received receipt is minutes old).
    Error codes: see :data:`RECEIPT_ERROR_CODES`, plus the chain's ``chain_untrusted``,
    ``chain_signature_invalid``, ``certificate_expired``, ``certificate_not_yet_valid``.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    if not anchors:
        raise ValueError("no trust anchors configured")
    # 1. The container and its signature by the signer certificate.
    signed = _parse_container(receipt)
    try:
        signer_key = signed.signer.public_key()
    except _UNREADABLE:
        raise _malformed("the signer key cannot be read") from None
    if not isinstance(signer_key, ec.EllipticCurvePublicKey):
        raise _malformed("the signer key is not an EC key")
    try:
        signer_key.verify(
            signed.signature,
            signed.signed_attributes if signed.signed_attributes is not None else signed.content,
            ec.ECDSA(hashes.SHA256()),
        )
    except InvalidSignature:
        raise VerificationError(
            "receipt_signature_invalid", "the receipt signature does not verify"
        ) from None
    # 2. The signer chains to Apple Root CA - G3 and is Apple's receipt signer.
    verify_chain(_path(signed.signer, signed.certificates), anchors=anchors, now=now)
    try:
        signed.signer.extensions.get_extension_for_oid(
            x509.ObjectIdentifier(OID_RECEIPT_SIGNER_MARKER)
        )
    except (x509.ExtensionNotFound, ValueError, x509.DuplicateExtension):
        raise VerificationError(
            "receipt_signer_not_authorized", "the receipt is not signed by Apple's receipt signer"
        ) from None
    # 3. The fields: App ID, attested key, type, validity window, freshness.
    fields = parse_receipt_payload(signed.content)
    if fields.app_id != app_id:
        raise VerificationError("receipt_app_id_mismatch", "the receipt is for another app")
    if fields.public_key != public_key:
        raise VerificationError("receipt_key_mismatch", "the receipt is for another App Attest key")
    if fields.receipt_type not in RECEIPT_TYPES or (
        receipt_type is not None and fields.receipt_type != receipt_type
    ):
        raise VerificationError(
            "receipt_type_unexpected",
            "the receipt has an unexpected type",
            seen=fields.receipt_type[:16],
            required=receipt_type or sorted(RECEIPT_TYPES),
        )
    if now + skew < (fields.not_before or fields.created_at):
        raise VerificationError("receipt_not_yet_valid", "the receipt is not valid yet")
    if now >= fields.expires_at:
        raise VerificationError(
            "receipt_expired", "the receipt has expired", expires_at=fields.expires_at.isoformat()
        )
    if max_age is not None and now - fields.created_at > max_age:
        raise VerificationError(
            "receipt_stale",
            "the receipt is older than allowed",
            created_at=fields.created_at.isoformat(),
        )
    return fields
