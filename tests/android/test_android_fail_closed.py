"""Issue 8: classification as Google does it, and every trust decision failing closed.

Classification (platform_verifiers/android/provisioning.py) is pinned for every real
vector, and each class is synthesised: RKP without ProvisioningInfo (Droid CA2 under the
root), RKP by ProvisioningInfo or by an RKP-only anchor, factory (serialNumber under the
root) and unknown. Only factory chains may carry expired intermediates.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from platform_verifiers.anchors import load_anchor
from platform_verifiers.android import (
    AndroidPolicy,
    VerifiedLinkCache,
    aosp_software_roots,
    google_hardware_roots,
    parse_status_list,
    verify_android_attestation,
)
from platform_verifiers.android.certs import decode_certificate
from platform_verifiers.android.chain import _spki, decode_chain, find_anchor
from platform_verifiers.android.provisioning import DROID_CA2, classify
from platform_verifiers.errors import VerificationError
from tests.test_review_regressions import _duplicate_last_extension

from .conftest import CHAIN_ONLY_POLICY, instant, load_chain, manifest_entries
from .synth import (
    DEFAULT_PACKAGE,
    DEFAULT_SIGNER,
    DROID_CA2_NAME,
    PROVISIONING_INFO_OID,
    factory_name,
    make_chain,
    make_root,
)

NOW = datetime.now(UTC)
POLICY = AndroidPolicy(
    package_names=frozenset({DEFAULT_PACKAGE}), signer_digests=frozenset({DEFAULT_SIGNER})
)
EXPIRED = (NOW - timedelta(days=60), NOW - timedelta(days=1))
FUTURE = (NOW + timedelta(days=1), NOW + timedelta(days=30))
KEY_USAGE_SIGN_ONLY = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def _verify(chain: list[bytes], anchors: Any, **overrides: Any) -> Any:
    arguments: dict[str, Any] = {
        "chain": chain,
        "challenge": b"challenge",
        "policy": POLICY,
        "anchors": anchors,
        "revocation": None,
        "now": NOW,
    }
    arguments.update(overrides)
    return verify_android_attestation(**arguments)


def _code(chain: list[bytes], anchors: Any, **overrides: Any) -> str:
    with pytest.raises(VerificationError) as caught:
        _verify(chain, anchors, **overrides)
    return caught.value.code


def _classes(result: Any) -> tuple[str, str]:
    return result.provisioning.value, result.provisioning_rule.value


# -- every real vector -------------------------------------------------------------------
# (class, deciding rule). Untrusted chains are classified against their own top
# certificate, as a test root would be; the single certificates are not chains.
VECTOR_CLASSES = {
    "ka_akita_sdk34_SB_RSA_NONE": ("rkp", "droid_ca2_under_root"),
    "ka_akita_sdk34_TEE_RSA_BASE_IMEI": ("rkp", "droid_ca2_under_root"),
    "ka_akita_sdk34_TEE_RSA_NONE": ("rkp", "droid_ca2_under_root"),
    "ka_akita_sdk34_TEE_RSA_NONE_USERAUTH": ("rkp", "droid_ca2_under_root"),
    "ka_caiman_sdk36_SB_EC_RKP": ("rkp", "droid_ca2_under_root"),
    "pywebauthn_pixel8a_android_key": ("rkp", "droid_ca2_under_root"),
    "ka_tegu_sdk36_SB_EC_2026_ROOT": ("rkp", "rkp_only_anchor"),
    "ka_tegu_sdk37_TEE_MAX_USAGE_COUNT": ("rkp", "rkp_only_anchor"),
    "ka_tegu_sdk37_TEE_TRUSTED_CONF": ("rkp", "rkp_only_anchor"),
    "ka_blueline_sdk28_SB_RSA_NONE": ("factory", "serial_number_under_root"),
    "ka_blueline_sdk28_TEE_EC_NONE": ("factory", "serial_number_under_root"),
    "ka_blueline_sdk28_TEE_RSA_NONE": ("factory", "serial_number_under_root"),
    "ka_sony_xperia10iii_sdk33_TEE_EC": ("factory", "serial_number_under_root"),
    "ka_tokay_sdk37_TEE_MLDSA_FACTORY": ("factory", "serial_number_under_root"),
    "ka_invalid_malformed_rot_device_locked": ("factory", "serial_number_under_root"),
    "gka_pem_EC_TEE": ("factory", "serial_number_under_root"),
    "gka_der_EC_TEE": ("factory", "serial_number_under_root"),
    "gka_der_RSA_TEE": ("factory", "serial_number_under_root"),
    "warden_roboto_nokia_x10_keymaster4": ("factory", "serial_number_under_root"),
    "worldcoin_factory_tee_leaf_notafter_1970": ("factory", "serial_number_under_root"),
    "worldcoin_huawei_jkm_lx3_bad_crldp": ("factory", "serial_number_under_root"),
    "worldcoin_pixel3_strongbox_km41": ("factory", "serial_number_under_root"),
    # pre-production (non-Google) root: FAIL chain_untrusted, factory-shaped below it
    "gka_pem_EC_StrongBox": ("factory", "serial_number_under_root"),
    "gka_der_RSA_StrongBox": ("factory", "serial_number_under_root"),
    # AOSP software root: FAIL chain_untrusted unless explicitly trusted; dated like RKP
    "ka_marlin_sdk29_TEE_EC_NONE": ("unknown", "no_rule_matched"),
    "warden_android_emulator_ec_software": ("unknown", "no_rule_matched"),
    "warden_roboto_bq_aquaris_x_nougat_hybrid": ("unknown", "no_rule_matched"),
}
CHAINS = [
    e
    for e in manifest_entries("android_key_attestation_chain")
    if e["path"].rsplit("/", 1)[-1].removesuffix(".pem") in VECTOR_CLASSES
]


def _stem(entry: dict[str, Any]) -> str:
    return str(entry["path"]).rsplit("/", 1)[-1].removesuffix(".pem")


@pytest.mark.parametrize("entry", CHAINS, ids=_stem)
def test_classify_real_vector_gives_pinned_class_and_rule(entry: dict[str, Any]) -> None:
    ders = load_chain(entry["path"])
    certs = decode_chain(ders)
    anchors = (*google_hardware_roots(), *aosp_software_roots())
    try:
        anchor = find_anchor(certs, anchors, None)
    except VerificationError:
        top = x509.load_der_x509_certificate(ders[-1]).public_bytes(serialization.Encoding.PEM)
        anchor = load_anchor("own_top", top, source="test")
    result = classify(certs, anchor, _spki(anchor))
    assert (result.provisioning.value, result.rule.value) == VECTOR_CLASSES[_stem(entry)]


def test_classify_every_chain_vector_is_pinned() -> None:
    stems = {_stem(e) for e in manifest_entries("android_key_attestation_chain")}
    if not stems:
        pytest.skip("real vectors not present")
    assert stems == set(VECTOR_CLASSES)


@pytest.mark.parametrize(
    "stem",
    [
        "ka_tegu_sdk36_SB_EC_2026_ROOT",
        "ka_tegu_sdk37_TEE_MAX_USAGE_COUNT",
        "ka_tegu_sdk37_TEE_TRUSTED_CONF",
    ],
)
def test_classify_ec_root_chains_carry_droid_ca2_under_root(stem: str) -> None:
    # The EC "Key Attestation CA1" chains use the same RKP intermediate name, so even
    # without the anchor rule they classify as RKP.
    ders = load_chain(f"android/{stem}.pem")
    assert x509.load_der_x509_certificate(ders[-2]).subject.rfc4514_string() == DROID_CA2
    certs = decode_chain(ders)
    anchor = find_anchor(certs, google_hardware_roots(), None)
    renamed = load_anchor(
        "not_rkp_only", anchor.certificate.public_bytes(serialization.Encoding.PEM), source="t"
    )
    assert classify(certs, renamed, _spki(renamed)).rule.value == "droid_ca2_under_root"


def test_cli_and_verifier_report_rule_for_real_rkp_vector() -> None:
    entry = next(e for e in CHAINS if _stem(e) == "ka_caiman_sdk36_SB_EC_RKP")
    result = verify_android_attestation(
        chain=load_chain(entry["path"]),
        challenge=None,
        policy=CHAIN_ONLY_POLICY,
        anchors=google_hardware_roots(),
        revocation=None,
        now=instant(entry["expected"]["now"]),
    )
    assert _classes(result) == ("rkp", "droid_ca2_under_root")


# -- synthetic chains per class ----------------------------------------------------------
def test_classify_droid_ca2_without_provisioning_info_is_rkp() -> None:
    synth = make_chain(under_root_name=DROID_CA2_NAME)
    assert _classes(_verify(synth.chain, [synth.anchor])) == ("rkp", "droid_ca2_under_root")


def test_verify_droid_ca2_expired_intermediate_fails_certificate_expired() -> None:
    # The issue's device: RKP chain under the RSA root, no ProvisioningInfo, expired.
    synth = make_chain(under_root_name=DROID_CA2_NAME, intermediate_validity=EXPIRED)
    assert _code(synth.chain, [synth.anchor]) == "certificate_expired"


def test_verify_droid_ca2_future_intermediate_fails_certificate_not_yet_valid() -> None:
    synth = make_chain(under_root_name=DROID_CA2_NAME, intermediate_validity=FUTURE)
    assert _code(synth.chain, [synth.anchor]) == "certificate_not_yet_valid"


def test_verify_droid_ca2_chain_below_root_expired_fails_certificate_expired() -> None:
    synth = make_chain(
        under_root_name=DROID_CA2_NAME, intermediate_validity=EXPIRED, include_root=False
    )
    assert _code(synth.chain, [synth.anchor]) == "certificate_expired"


def test_classify_provisioning_info_is_rkp() -> None:
    synth = make_chain(rkp=True)
    assert _classes(_verify(synth.chain, [synth.anchor])) == ("rkp", "provisioning_info_extension")


def test_classify_rkp_only_anchor_is_rkp_and_dated() -> None:
    root = make_root()
    pem = root.certificate.public_bytes(serialization.Encoding.PEM)
    anchor = load_anchor("google_hw_ec_p384_2025", pem, source="test")
    good = make_chain(root=root, under_root_name=factory_name())
    assert _classes(_verify(good.chain, [anchor])) == ("rkp", "rkp_only_anchor")
    expired = make_chain(root=root, under_root_name=factory_name(), intermediate_validity=EXPIRED)
    assert _code(expired.chain, [anchor]) == "certificate_expired"


def test_classify_serial_number_under_root_is_factory_and_undated() -> None:
    for window in (EXPIRED, FUTURE):
        synth = make_chain(under_root_name=factory_name(), intermediate_validity=window)
        assert _classes(_verify(synth.chain, [synth.anchor])) == (
            "factory",
            "serial_number_under_root",
        )


def test_classify_serial_number_without_title_is_factory() -> None:
    # Old factory chains (Sony) carry serialNumber alone.
    synth = make_chain(under_root_name=factory_name(title=None), intermediate_validity=EXPIRED)
    assert _classes(_verify(synth.chain, [synth.anchor]))[0] == "factory"


def test_classify_factory_below_root_uses_last_certificate() -> None:
    synth = make_chain(
        under_root_name=factory_name(), intermediate_validity=EXPIRED, include_root=False
    )
    assert _classes(_verify(synth.chain, [synth.anchor]))[0] == "factory"


def test_classify_serial_number_and_provisioning_info_is_rkp_and_dated() -> None:
    # Conflicting signals: the stricter class wins.
    synth = make_chain(under_root_name=factory_name(), rkp=True, intermediate_validity=EXPIRED)
    assert _code(synth.chain, [synth.anchor]) == "certificate_expired"


def test_classify_other_names_are_unknown() -> None:
    synth = make_chain()
    assert _classes(_verify(synth.chain, [synth.anchor])) == ("unknown", "no_rule_matched")


def test_verify_unknown_expired_intermediate_fails_certificate_expired() -> None:
    synth = make_chain(intermediate_validity=EXPIRED)
    assert _code(synth.chain, [synth.anchor]) == "certificate_expired"


def test_verify_unknown_future_intermediate_fails_certificate_not_yet_valid() -> None:
    synth = make_chain(intermediate_validity=FUTURE)
    assert _code(synth.chain, [synth.anchor]) == "certificate_not_yet_valid"


def test_classify_droid_ca2_lookalike_is_unknown() -> None:
    # Extra attributes, or a different order, are not Google's Droid CA2 name.
    lookalike = x509.Name(
        [
            x509.NameAttribute(x509.NameOID.COMMON_NAME, "Droid CA2"),
            x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, "Google LLC"),
        ]
    )
    synth = make_chain(under_root_name=lookalike, intermediate_validity=EXPIRED)
    assert _code(synth.chain, [synth.anchor]) == "certificate_expired"


def test_classify_leaf_directly_under_root_is_unknown() -> None:
    synth = make_chain(intermediates=0)
    assert _classes(_verify(synth.chain, [synth.anchor])) == ("unknown", "no_rule_matched")


# -- certificates used as CAs ------------------------------------------------------------
def test_verify_non_ca_leaf_issuer_on_rkp_chain_fails_intermediate_not_ca() -> None:
    # The Sony exception is for factory chains only.
    synth = make_chain(intermediate_ca=[False, True], under_root_name=DROID_CA2_NAME)
    assert _code(synth.chain, [synth.anchor]) == "intermediate_not_ca"


def test_verify_non_ca_leaf_issuer_on_unknown_chain_fails_intermediate_not_ca() -> None:
    synth = make_chain(intermediate_ca=[None, True])
    assert _code(synth.chain, [synth.anchor]) == "intermediate_not_ca"


def test_verify_issuer_without_key_cert_sign_fails_intermediate_not_ca() -> None:
    synth = make_chain(
        under_root_name=factory_name(), extra_extensions=[(2, KEY_USAGE_SIGN_ONLY, True)]
    )
    assert _code(synth.chain, [synth.anchor]) == "intermediate_not_ca"


def test_verify_factory_leaf_issuer_without_key_cert_sign_passes_like_sony() -> None:
    synth = make_chain(
        intermediate_ca=[False, True],
        under_root_name=factory_name(),
        extra_extensions=[(1, KEY_USAGE_SIGN_ONLY, True)],
    )
    assert _classes(_verify(synth.chain, [synth.anchor]))[0] == "factory"


def test_verify_rkp_leaf_issuer_without_key_cert_sign_fails_intermediate_not_ca() -> None:
    synth = make_chain(
        under_root_name=DROID_CA2_NAME, extra_extensions=[(1, KEY_USAGE_SIGN_ONLY, True)]
    )
    assert _code(synth.chain, [synth.anchor]) == "intermediate_not_ca"


# -- extensions --------------------------------------------------------------------------
UNKNOWN_OID = x509.ObjectIdentifier("1.3.6.1.4.1.99999.1")


@pytest.mark.parametrize("index", [0, 1, 2])
def test_verify_unknown_critical_extension_fails_extension_critical_unknown(index: int) -> None:
    ext = x509.UnrecognizedExtension(UNKNOWN_OID, b"\x05\x00")
    synth = make_chain(extra_extensions=[(index, ext, True)])
    assert _code(synth.chain, [synth.anchor]) == "extension_critical_unknown"


@pytest.mark.parametrize(
    ("oid", "value", "code"),
    [
        (UNKNOWN_OID, b"\x05\x00", "extension_critical_unknown"),
        (x509.ObjectIdentifier("2.5.29.15"), b"\x04\x01\x00", "extension_malformed"),
    ],
    ids=["critical-unknown", "key-usage-garbage"],
)
def test_verify_cached_intermediate_extension_problem_refuses_every_time(
    oid: x509.ObjectIdentifier, value: bytes, code: str
) -> None:
    # a decoded intermediate keeps what its extensions' check found (certs.py): with the
    # cache, the second verification reads it from the same object and still refuses,
    # naming the certificate's place in this chain
    ext = x509.UnrecognizedExtension(oid, value)
    synth = make_chain(intermediates=2, extra_extensions=[(2, ext, True)])
    cache = VerifiedLinkCache()
    for _ in range(2):
        with pytest.raises(VerificationError) as caught:
            _verify(synth.chain, [synth.anchor], verified_cache=cache)
        assert (caught.value.code, caught.value.detail["index"]) == (code, 2)
    assert caught.value.detail["oid"] == oid.dotted_string


def test_verify_unknown_non_critical_extension_passes() -> None:
    ext = x509.UnrecognizedExtension(UNKNOWN_OID, b"\x05\x00")
    synth = make_chain(extra_extensions=[(1, ext, False)])
    _verify(synth.chain, [synth.anchor])


@pytest.mark.parametrize(
    "value", [b"\xff\xff", b"\x01", b"\xa1\x01\x08\x00"], ids=["garbage", "not-a-map", "trailing"]
)
def test_verify_unreadable_provisioning_info_fails_extension_malformed(value: bytes) -> None:
    ext = x509.UnrecognizedExtension(PROVISIONING_INFO_OID, value)
    synth = make_chain(extra_extensions=[(1, ext, False)])
    assert _code(synth.chain, [synth.anchor]) == "extension_malformed"


def test_verify_unreadable_key_usage_fails_extension_malformed() -> None:
    ext = x509.UnrecognizedExtension(x509.ObjectIdentifier("2.5.29.15"), b"\x04\x01\x00")
    synth = make_chain(extra_extensions=[(1, ext, True)])
    assert _code(synth.chain, [synth.anchor]) == "extension_malformed"


def test_verify_duplicate_leaf_extension_fails_extension_duplicate() -> None:
    synth = make_chain()
    leaf = _duplicate_last_extension(synth.chain[0], synth.intermediate_keys[0])
    assert _code([leaf, *synth.chain[1:]], [synth.anchor]) == "extension_duplicate"


def test_verify_duplicate_basic_constraints_fails_extension_duplicate() -> None:
    # Two basicConstraints (cA TRUE then FALSE, or the reverse): which holds? Neither.
    synth = make_chain(intermediates=2)
    upper = _duplicate_last_extension(synth.chain[2], synth.root.key)
    # synth intermediates carry basicConstraints last: the duplicate is basicConstraints
    assert decode_certificate(upper, 2).extensions[-1].oid == "2.5.29.19"
    assert (
        _code([synth.chain[0], synth.chain[1], upper, *synth.chain[3:]], [synth.anchor])
        == "extension_duplicate"
    )


def test_verify_garbage_basic_constraints_fails_certificate_malformed() -> None:
    # basicConstraints whose value is a NULL: pyca and the tolerant reader both refuse it.
    bad = x509.UnrecognizedExtension(x509.ObjectIdentifier("2.5.29.19"), b"\x05\x00")
    broken = make_chain(extra_extensions=[(0, bad, True)])
    assert _code(broken.chain, [broken.anchor]) == "certificate_malformed"


# -- found by the fuzz suite -------------------------------------------------------------
def test_decode_invalid_x509_version_fails_certificate_malformed() -> None:
    der = bytearray(make_chain().chain[0])
    # tbsCertificate.version [0] EXPLICIT INTEGER 2 -> 109 (pyca raises InvalidVersion)
    at = der.index(bytes.fromhex("a003020102"))
    der[at + 4] = 109
    with pytest.raises(VerificationError) as caught:
        decode_certificate(bytes(der), 0)
    assert caught.value.code == "certificate_malformed"


def test_verify_issuer_with_unknown_key_type_fails_chain_signature_invalid() -> None:
    synth = make_chain()
    der = bytearray(synth.chain[1])
    ec_oid = bytes.fromhex("06072a8648ce3d0201")  # id-ecPublicKey
    at = der.index(ec_oid)
    der[at + 4] ^= 0x40  # now an OID no key loader knows
    assert (
        _code([synth.chain[0], bytes(der), *synth.chain[2:]], [synth.anchor])
        == "chain_signature_invalid"
    )


# -- revocation serial formatting --------------------------------------------------------
@pytest.mark.parametrize("form", ["upper", "leading_zeros", "both", "spaces"])
def test_verify_listed_serial_in_other_form_fails_certificate_revoked(form: str) -> None:
    synth = make_chain(leaf_serial=0xABCDEF)
    key = {
        "upper": "ABCDEF",
        "leading_zeros": "0000abcdef",
        "both": "00ABCDEF",
        "spaces": " abcdef ",
    }[form]
    snapshot = parse_status_list(b'{"entries": {"%s": {"status": "REVOKED"}}}' % key.encode(), NOW)
    assert _code(synth.chain, [synth.anchor], revocation=snapshot) == "certificate_revoked"


@pytest.mark.parametrize("key", ["xyz", "0x1f", "", "-1f", "1f 2e"])
def test_parse_status_list_non_hex_key_fails_revocation_list_malformed(key: str) -> None:
    with pytest.raises(VerificationError) as caught:
        parse_status_list(b'{"entries": {"%s": {"status": "REVOKED"}}}' % key.encode(), NOW)
    assert caught.value.code == "revocation_list_malformed"


def test_verify_unknown_anchor_fails_chain_untrusted() -> None:
    synth = make_chain(under_root_name=factory_name())
    assert _code(synth.chain, google_hardware_roots()) == "chain_untrusted"


def test_verify_leaf_key_of_other_curve_is_reported_by_policy() -> None:
    # The attested key is what the key proof must be signed with (checked by the service);
    # the verifier itself refuses leaf keys that could never be an instance key.
    synth = make_chain(leaf_key=ec.generate_private_key(ec.SECP384R1()))
    assert _code(synth.chain, [synth.anchor]) == "policy_violation"


def test_decode_huge_inner_length_fails_certificate_malformed() -> None:
    # pyasn1 raised OverflowError on an 8-byte length (found by tests/fuzz).
    with pytest.raises(VerificationError) as caught:
        decode_certificate(bytes.fromhex("300a04887fffffffffffffff"), 0)
    assert caught.value.code == "certificate_malformed"


def test_parse_key_description_huge_inner_length_fails_key_description_malformed() -> None:
    from platform_verifiers.android import parse_key_description

    with pytest.raises(VerificationError) as caught:
        parse_key_description(bytes.fromhex("300a04887fffffffffffffff"))
    assert caught.value.code == "key_description_malformed"


# -- keyUsage: the direct DER reading agrees with pyasn1 (the schema of record) ---------
def _key_usage_pyasn1(value: bytes) -> frozenset[int] | None:
    from pyasn1.codec.ber import decoder as ber_decoder
    from pyasn1_modules import rfc5280

    from platform_verifiers.errors import ASN1_DECODE_ERRORS

    try:
        bits, rest = ber_decoder.decode(value, asn1Spec=rfc5280.KeyUsage())
        found = frozenset(i for i, bit in enumerate(bits) if bit)
    except ASN1_DECODE_ERRORS:
        return None
    return None if rest else found


def _real_key_usages() -> list[bytes]:
    from platform_verifiers.android.extensions import KEY_USAGE_OID

    found = []
    for entry in manifest_entries("android_key_attestation_chain"):
        for index, der in enumerate(load_chain(entry["path"])):
            cert = decode_certificate(der, index)
            found += [e.value for e in cert.extensions if e.oid == KEY_USAGE_OID]
    return found


def test_key_usage_der_real_vectors_agree_with_pyasn1() -> None:
    from platform_verifiers.android.extensions import key_usage_der

    values = _real_key_usages()
    assert values
    for value in values:
        fast = key_usage_der(value)
        assert fast is not None, value.hex()  # every real keyUsage takes the direct path
        assert fast == _key_usage_pyasn1(value), value.hex()


@pytest.mark.parametrize(
    "value",
    [
        b"\x03\x02\x01\x86",  # keyCertSign + cRLSign + digitalSignature, 1 unused bit
        b"\x03\x02\x07\x80",  # digitalSignature only
        b"\x03\x03\x07\x80\x80",  # decipherOnly (bit 8)
        b"\x03\x01\x00",  # no bits
        b"\x03\x02\x01\x87",  # padding bit set: not DER, pyasn1 decides
        b"\x03\x01\x01",  # unused bits without content
        b"\x03\x02\x08\x80",  # 8 unused bits
        b"\x03\x81\x01\x00",  # long-form length
        b"\x23\x04\x03\x02\x07\x80",  # constructed BIT STRING (BER)
        b"\x03\x03\x07\x80",  # length past the end
        b"\x03\x02\x07\x80\x00",  # trailing byte
        b"\x04\x02\x07\x80",  # not a BIT STRING
        b"",
    ],
)
def test_key_usage_der_direct_or_pyasn1_same_verdict(value: bytes) -> None:
    from platform_verifiers.android.certs import ExtensionInfo
    from platform_verifiers.android.extensions import (
        KEY_USAGE_OID,
        extension_problem,
        key_usage_bits,
        key_usage_der,
    )

    expected = _key_usage_pyasn1(value)
    fast = key_usage_der(value)
    assert fast is None or fast == expected
    ext = ExtensionInfo(KEY_USAGE_OID, True, value)
    if expected is None:
        problem = extension_problem((ext,))
        assert problem is not None and problem[0] == "extension_malformed"
    else:
        assert key_usage_bits(value) == expected
        assert extension_problem((ext,)) is None


def test_key_usage_der_random_inputs_agree_with_pyasn1() -> None:
    import random

    from platform_verifiers.android.extensions import key_usage_der

    rng = random.Random(12)
    for _ in range(3000):
        content = bytes(rng.randrange(256) for _ in range(rng.randrange(4)))
        unused = rng.choice([0, 0, 1, 3, 7, 8])
        value = bytes([0x03, len(content) + 1, unused]) + content
        fast = key_usage_der(value)
        if fast is not None:
            assert fast == _key_usage_pyasn1(value), value.hex()

# -- review: certificates past the root cannot change the class ------------------------------
def _serial_number_root() -> Any:
    """A root named like Google's RSA roots (``serialNumber=f92009e853b6b045``)."""
    from cryptography.hazmat.primitives import hashes

    from .synth import TestRoot

    key = ec.generate_private_key(ec.SECP256R1())
    name = factory_name(serial="f92009e853b6b045", title=None)

    def issue() -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(days=3650))
            .not_valid_after(NOW + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )

    return TestRoot(key, issue()), issue


def test_verify_root_repeated_after_expired_rkp_chain_fails_chain_certificate_repeated() -> None:
    root, _ = _serial_number_root()
    synth = make_chain(root=root, under_root_name=DROID_CA2_NAME, intermediate_validity=EXPIRED)
    assert _code(synth.chain, [synth.anchor]) == "certificate_expired"  # as sent by the device
    # the root sent twice made the "certificate under the root" the root itself (factory)
    assert _code([*synth.chain, synth.chain[-1]], [synth.anchor]) == "chain_certificate_repeated"


def test_verify_reissued_root_above_root_fails_chain_continues_past_root() -> None:
    root, reissue = _serial_number_root()
    synth = make_chain(root=root, under_root_name=DROID_CA2_NAME, intermediate_validity=EXPIRED)
    again = reissue().public_bytes(serialization.Encoding.DER)  # same key, another certificate
    assert _code([*synth.chain, again], [synth.anchor]) == "chain_continues_past_root"


def test_verify_intermediate_repeated_fails_chain_certificate_repeated() -> None:
    synth = make_chain(under_root_name=factory_name())
    chain = [synth.chain[0], synth.chain[1], synth.chain[1], *synth.chain[2:]]
    assert _code(chain, [synth.anchor]) == "chain_certificate_repeated"
