"""Synthetic App Attest receipts, and a loopback stand-in for Apple's receipt endpoint.

Receipts have the shape of real ones (Apple, "Assessing fraud risk"): CMS SignedData
(built by pyca's PKCS7SignatureBuilder) signed by a "receipt signer" carrying Apple's marker
extension, under a test root standing in for Apple Root CA - G3 (trusted only through the
test-only ``apple.test_receipt_root_files`` setting). The payload is the documented SET of
``SEQUENCE { type, version, value }``.

The stand-in checks what Apple checks of a caller: ``Authorization`` is an ES256 JWT with
the publisher's key id (``kid``) and team id (``iss``), recent ``iat``, signed by the
publisher's key; the body is the base64 receipt. It answers what the test sets.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

MARKER = x509.ObjectIdentifier("1.2.840.113635.100.12.15")


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def _int(value: int) -> bytes:
    return _tlv(0x02, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True))


def encode_payload(fields: dict[int, bytes]) -> bytes:
    """DER ``SET OF SEQUENCE { INTEGER type, INTEGER version, OCTET STRING value }``."""
    items = sorted(_tlv(0x30, _int(t) + _int(1) + _tlv(0x04, v)) for t, v in fields.items())
    return _tlv(0x31, b"".join(items))


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Apple Inc."),
        ]
    )


def _cert(
    subject: str,
    issuer: str,
    key: Any,
    signer: Any,
    *,
    ca: bool,
    marker: bool = False,
    not_before: datetime = datetime(2020, 1, 1, tzinfo=UTC),
    not_after: datetime = datetime(2050, 1, 1, tzinfo=UTC),
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if marker:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(MARKER, b"\x05\x00"), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


class ReceiptPki(NamedTuple):
    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey
    intermediate: x509.Certificate
    signer_key: ec.EllipticCurvePrivateKey
    signer: x509.Certificate

    @property
    def root_pem(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.PEM)


def make_receipt_pki(
    *, marker: bool = True, signer_not_after: datetime | None = None
) -> ReceiptPki:
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = _cert(
        "Test Apple Root CA - G3",
        "Test Apple Root CA - G3",
        root_key.public_key(),
        root_key,
        ca=True,
    )
    inter_key = ec.generate_private_key(ec.SECP384R1())
    inter = _cert(
        "Test Application Integration CA",
        "Test Apple Root CA - G3",
        inter_key.public_key(),
        root_key,
        ca=True,
    )
    signer_key = ec.generate_private_key(ec.SECP256R1())
    signer = _cert(
        "Test Fraud Receipt Signing",
        "Test Application Integration CA",
        signer_key.public_key(),
        inter_key,
        ca=False,
        marker=marker,
        not_after=signer_not_after or datetime(2050, 1, 1, tzinfo=UTC),
    )
    return ReceiptPki(root_key, root, inter_key, inter, signer_key, signer)


def credential_certificate(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """A stand-in credential certificate for the attested key (field 3 of the receipt)."""
    signer = ec.generate_private_key(ec.SECP256R1())
    cert = _cert("credential", "Test App Attestation CA 1", public_key, signer, ca=False)
    return cert.public_bytes(serialization.Encoding.DER)


def make_receipt(
    pki: ReceiptPki,
    *,
    app_id: str,
    public_key: ec.EllipticCurvePublicKey,
    created: datetime,
    receipt_type: str = "RECEIPT",
    risk_metric: int | None = 1,
    lifetime: timedelta = timedelta(days=90),
    signed_attributes: bool = False,
    fields: dict[int, bytes] | None = None,
    signing_key: ec.EllipticCurvePrivateKey | None = None,
) -> bytes:
    """A DER CMS SignedData receipt; ``fields`` overrides or adds payload fields."""
    iso = "%Y-%m-%dT%H:%M:%S.000Z"
    payload: dict[int, bytes] = {
        2: app_id.encode(),
        3: credential_certificate(public_key),
        4: b"\x00" * 32,
        5: b"synthetic-token",
        6: receipt_type.encode(),
        12: created.astimezone(UTC).strftime(iso).encode(),
        19: created.astimezone(UTC).strftime(iso).encode(),
        21: (created + lifetime).astimezone(UTC).strftime(iso).encode(),
    }
    if risk_metric is not None:
        payload[17] = str(risk_metric).encode()
    payload.update(fields or {})
    payload = {k: v for k, v in payload.items() if v is not None}
    options = [pkcs7.PKCS7Options.Binary]
    if not signed_attributes:
        options.append(pkcs7.PKCS7Options.NoAttributes)
    builder = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(encode_payload(payload))
        .add_signer(pki.signer, signing_key or pki.signer_key, hashes.SHA256())
        .add_certificate(pki.intermediate)
        .add_certificate(pki.root)
    )
    return builder.sign(serialization.Encoding.DER, options)


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class AppleReceiptStandIn:
    """Loopback ``/v1/attestationData``: checks the JWT like Apple, answers ``answer(receipt)``."""

    def __init__(self, *, team_id: str, key_id: str, public_key: ec.EllipticCurvePublicKey) -> None:
        self.team_id, self.key_id, self.public_key = team_id, key_id, public_key
        self.answer: Callable[[bytes], tuple[int, bytes]] = lambda receipt: (304, b"")
        self.requests = 0
        self.received: list[bytes] = []
        self.auth_errors: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.requests += 1
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                why = outer.check_jwt(self.headers.get("Authorization", ""))
                if why:
                    outer.auth_errors.append(why)
                    status, data = 401, b""
                else:
                    try:
                        receipt = base64.b64decode(body, validate=True)
                    except ValueError:
                        status, data = 400, b""
                    else:
                        outer.received.append(receipt)
                        status, raw = outer.answer(receipt)
                        data = base64.b64encode(raw) if status == 200 else b""
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/attestationData"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def check_jwt(self, token: str) -> str | None:
        parts = token.split(".")
        if len(parts) != 3:
            return "format"
        header, claims = json.loads(_b64url_decode(parts[0])), json.loads(_b64url_decode(parts[1]))
        if header.get("alg") != "ES256" or header.get("kid") != self.key_id:
            return "header"
        if claims.get("iss") != self.team_id:
            return "iss"
        iat = claims.get("iat")
        if (
            not isinstance(iat, int) or abs(time.time() - iat) > 7 * 86400
        ):  # loose: tests move the clock
            return "iat"
        raw = _b64url_decode(parts[2])
        if len(raw) != 64:
            return "signature"
        signature = encode_dss_signature(
            int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
        )
        try:
            self.public_key.verify(
                signature, f"{parts[0]}.{parts[1]}".encode(), ec.ECDSA(hashes.SHA256())
            )
        except InvalidSignature:
            return "signature"
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
