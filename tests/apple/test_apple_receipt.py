"""App Attest receipts: real receipts at their recorded time, synthetic ones for every rejection.

The fourteen real attestations in ../shared/vectors carry Apple-signed receipts (type
ATTEST); they are verified against the pinned Apple Root CA - G3 at the receipt's own
creation time (the manifest's ``now`` is sometimes the start of the capture day, before the
receipt existed). One real receipt (webauthn4j kayak, 2020-09) does not verify: it carries
signed attributes, but its signature is over the content itself, not over those attributes
as RFC 5652 5.4 requires (OpenSSL's ``cms -verify`` refuses it too), so it is refused. Every
other receipt, from the same signer certificate among them, has no signed attributes.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from platform_verifiers.anchors import load_anchor
from platform_verifiers.apple import apple_receipt_roots, parse_receipt_payload, verify_receipt
from platform_verifiers.apple.anchors import APPLE_ROOT_CA_G3_SHA256
from platform_verifiers.apple.receipt import _parse_container
from platform_verifiers.errors import VerificationError

from .receipt_synth import ReceiptPki, make_receipt, make_receipt_pki
from .vectors import VECTORS_DIR, load_manifest_entries, vector_params

KIND = "apple_appattest_attestation"
BROKEN_SIGNATURE = {"webauthn4j_kayak_ios14_0_1_attestation"}
APP_ID = "TEAM123456.com.example.wallet"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _vector(entry: dict[str, Any]) -> tuple[bytes, bytes]:
    text = (VECTORS_DIR / entry["path"]).read_text().strip()
    obj = cbor2.loads(base64.b64decode(text + "=" * (-len(text) % 4)))
    leaf = x509.load_der_x509_certificate(obj["attStmt"]["x5c"][0])
    point = leaf.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return obj["attStmt"]["receipt"], point


def _recorded_time(receipt: bytes) -> datetime:
    return parse_receipt_payload(_parse_container(receipt).content).created_at + timedelta(
        minutes=1
    )


def test_receipt_root_pinned_to_apple_fingerprint() -> None:
    (anchor,) = apple_receipt_roots()
    assert anchor.sha256 == APPLE_ROOT_CA_G3_SHA256
    assert anchor.certificate.subject.rfc4514_string().endswith("CN=Apple Root CA - G3")


def test_receipt_root_tampered_pem_refused() -> None:
    pki = make_receipt_pki()
    with pytest.raises(ValueError):
        load_anchor("x", pki.root_pem, source="test", sha256=APPLE_ROOT_CA_G3_SHA256)


@pytest.mark.parametrize("entry", vector_params(KIND))
def test_receipt_real_vector_at_recorded_time(entry: dict[str, Any]) -> None:
    receipt, point = _vector(entry)
    at = _recorded_time(receipt)
    kwargs: dict[str, Any] = {
        "anchors": apple_receipt_roots(),
        "app_id": entry["expected"]["app_id"],
        "public_key": point,
        "now": at,
    }
    if entry["path"].split("/")[-1].removesuffix(".b64") in BROKEN_SIGNATURE:
        with pytest.raises(VerificationError) as info:
            verify_receipt(receipt, **kwargs)
        assert info.value.code == "receipt_signature_invalid"
        return
    fields = verify_receipt(receipt, receipt_type="ATTEST", **kwargs)
    assert fields.app_id == entry["expected"]["app_id"]
    assert fields.receipt_type == "ATTEST" and fields.risk_metric is None
    assert fields.created_at < fields.expires_at


#: real receipts with bytes changed (offset: new byte), found by a review's fuzzing: each was
#: an exception out of the verifier (a 500 at registration for a fraud-metric app) before
BROKEN_RECEIPTS = [
    ("veehaitch_ios_14_2_attestation", dict.fromkeys(range(4, 13), 0x80), "unterminated OID"),
    ("warden_ios_ida_attestation", {114: 11, 436: 7, 899: 215, 2078: 18}, "certificate"),
    ("node_app_attest_development_attestation", {1512: 6}, "signer key"),
    ("basd_ios14_4_attestation", {720: 134, 1209: 243, 2559: 29, 3614: 143}, "certificate"),
    ("warden_ios16_attestation", {2170: 188}, "certificate"),
    ("apple_doc_sample_2026_attestation", {3323: 130}, "certificate"),
    ("veehaitch_ios_14_4_beta_2_attestation", {1474: 78}, "signer key"),
]


@pytest.mark.parametrize(
    ("stem", "changes", "reason"), BROKEN_RECEIPTS, ids=[b[0] for b in BROKEN_RECEIPTS]
)
def test_receipt_real_vector_with_broken_bytes_malformed(
    stem: str, changes: dict[int, int], reason: str
) -> None:
    entries = [e for e in load_manifest_entries(KIND) if Path(e["path"]).stem == stem]
    if not entries:
        pytest.skip(f"real App Attest vectors not found at {VECTORS_DIR}")
    receipt, point = _vector(entries[0])
    at = _recorded_time(receipt)
    changed = bytearray(receipt)
    for offset, byte in changes.items():
        changed[offset] = byte
    with pytest.raises(VerificationError) as info:
        verify_receipt(
            bytes(changed), anchors=apple_receipt_roots(), app_id=entries[0]["expected"]["app_id"],
            public_key=point, now=at,
        )
    assert info.value.code == "receipt_malformed"
    assert reason in info.value.detail["reason"]


@pytest.mark.parametrize("entry", vector_params(KIND)[:1])
def test_receipt_real_vector_wrong_expectations_codes(entry: dict[str, Any]) -> None:
    receipt, point = _vector(entry)
    at = _recorded_time(receipt)
    app_id = entry["expected"]["app_id"]
    anchors = apple_receipt_roots()
    cases = [
        ({"app_id": "ABCDEFGHIJ.other", "public_key": point, "now": at}, "receipt_app_id_mismatch"),
        (
            {"app_id": app_id, "public_key": b"\x04" + b"\x01" * 64, "now": at},
            "receipt_key_mismatch",
        ),
        (
            {"app_id": app_id, "public_key": point, "now": at, "receipt_type": "RECEIPT"},
            "receipt_type_unexpected",
        ),
        (
            {"app_id": app_id, "public_key": point, "now": at, "max_age": timedelta(seconds=1)},
            "receipt_stale",
        ),
        (
            {"app_id": app_id, "public_key": point, "now": at - timedelta(days=1)},
            "receipt_not_yet_valid",
        ),
        (
            {"app_id": app_id, "public_key": point, "now": at + timedelta(days=120)},
            "receipt_expired",
        ),
        (
            {"app_id": app_id, "public_key": point, "now": at + timedelta(days=800)},
            "certificate_expired",
        ),
    ]
    for kwargs, code in cases:
        with pytest.raises(VerificationError) as info:
            verify_receipt(receipt, anchors=anchors, **kwargs)
        assert info.value.code == code, kwargs
    # a receipt is not trusted under the App Attest root, only under Apple Root CA - G3
    from platform_verifiers.apple import apple_app_attest_roots

    with pytest.raises(VerificationError) as info:
        verify_receipt(
            receipt, anchors=apple_app_attest_roots(), app_id=app_id, public_key=point, now=at
        )
    assert info.value.code == "chain_untrusted"


# -- synthetic receipts ----------------------------------------------------------------


@pytest.fixture(scope="module")
def pki() -> ReceiptPki:
    return make_receipt_pki()


@pytest.fixture(scope="module")
def device() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _point(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def _verify(receipt: bytes, pki: ReceiptPki, device: ec.EllipticCurvePrivateKey, **kw: Any) -> Any:
    anchor = load_anchor("test receipt root", pki.root_pem, source="test")
    return verify_receipt(
        receipt,
        anchors=kw.pop("anchors", (anchor,)),
        app_id=APP_ID,
        public_key=_point(device),
        now=kw.pop("now", NOW + timedelta(seconds=5)),
        **kw,
    )


@pytest.mark.parametrize("signed_attributes", [False, True], ids=["no-attrs", "signed-attrs"])
def test_receipt_synthetic_genuine_passes_with_risk_metric(
    pki: ReceiptPki, device: ec.EllipticCurvePrivateKey, signed_attributes: bool
) -> None:
    receipt = make_receipt(
        pki,
        app_id=APP_ID,
        public_key=device.public_key(),
        created=NOW,
        risk_metric=7,
        signed_attributes=signed_attributes,
    )
    fields = _verify(receipt, pki, device, receipt_type="RECEIPT", max_age=timedelta(minutes=5))
    assert (fields.receipt_type, fields.risk_metric) == ("RECEIPT", 7)


def test_receipt_synthetic_tampered_payload_signature_invalid(
    pki: ReceiptPki, device: ec.EllipticCurvePrivateKey
) -> None:
    receipt = make_receipt(
        pki, app_id=APP_ID, public_key=device.public_key(), created=NOW, risk_metric=1
    )
    index = receipt.index(b"RECEIPT")
    tampered = receipt[:index] + b"RECEIPU" + receipt[index + 7 :]
    with pytest.raises(VerificationError) as info:
        _verify(tampered, pki, device)
    assert info.value.code == "receipt_signature_invalid"


def test_receipt_synthetic_signed_by_other_key_signature_invalid(
    pki: ReceiptPki, device: ec.EllipticCurvePrivateKey
) -> None:
    other = make_receipt_pki()
    receipt = make_receipt(other, app_id=APP_ID, public_key=device.public_key(), created=NOW)
    with pytest.raises(VerificationError) as info:
        _verify(receipt, pki, device)
    assert info.value.code == "chain_untrusted"


def test_receipt_synthetic_signer_without_marker_not_authorized(
    device: ec.EllipticCurvePrivateKey,
) -> None:
    pki = make_receipt_pki(marker=False)
    receipt = make_receipt(pki, app_id=APP_ID, public_key=device.public_key(), created=NOW)
    with pytest.raises(VerificationError) as info:
        _verify(receipt, pki, device)
    assert info.value.code == "receipt_signer_not_authorized"


@pytest.mark.parametrize(
    "receipt",
    [b"", b"synthetic receipt", b"\x30\x80\x06\x09", b"\x30\x03\x02\x01\x01", b"\x30" * 5000],
    ids=["empty", "text", "truncated", "not-signed-data", "deep"],
)
def test_receipt_garbage_malformed(
    pki: ReceiptPki, device: ec.EllipticCurvePrivateKey, receipt: bytes
) -> None:
    with pytest.raises(VerificationError) as info:
        _verify(receipt, pki, device)
    assert info.value.code == "receipt_malformed"


@pytest.mark.parametrize(
    "fields",
    [{2: None}, {21: None}, {17: b"many"}, {12: b"yesterday"}],
    ids=["no-app-id", "no-expiry", "risk-not-number", "bad-time"],
)
def test_receipt_synthetic_bad_fields_malformed(
    pki: ReceiptPki, device: ec.EllipticCurvePrivateKey, fields: dict[int, Any]
) -> None:
    receipt = make_receipt(
        pki, app_id=APP_ID, public_key=device.public_key(), created=NOW, fields=fields
    )
    with pytest.raises(VerificationError) as info:
        _verify(receipt, pki, device)
    assert info.value.code == "receipt_malformed"


def test_receipt_synthetic_created_in_future_not_yet_valid(
    pki: ReceiptPki, device: ec.EllipticCurvePrivateKey
) -> None:
    receipt = make_receipt(
        pki, app_id=APP_ID, public_key=device.public_key(), created=NOW + timedelta(hours=1)
    )
    with pytest.raises(VerificationError) as info:
        _verify(receipt, pki, device)
    assert info.value.code == "receipt_not_yet_valid"


def test_receipt_synthetic_unknown_type_unexpected(
    pki: ReceiptPki, device: ec.EllipticCurvePrivateKey
) -> None:
    receipt = make_receipt(
        pki, app_id=APP_ID, public_key=device.public_key(), created=NOW, receipt_type="OTHER"
    )
    with pytest.raises(VerificationError) as info:
        _verify(receipt, pki, device)
    assert info.value.code == "receipt_type_unexpected"


def test_receipt_naive_now_value_error(pki: ReceiptPki, device: ec.EllipticCurvePrivateKey) -> None:
    receipt = make_receipt(pki, app_id=APP_ID, public_key=device.public_key(), created=NOW)
    with pytest.raises(ValueError):
        _verify(receipt, pki, device, now=NOW.replace(tzinfo=None))
    with pytest.raises(ValueError):
        _verify(receipt, pki, device, anchors=())
