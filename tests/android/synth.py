"""Synthetic Android Key Attestation chains for tests (and for simulating a device).

``make_chain`` builds a test root, intermediates and a leaf whose KeyDescription is
encoded with pyasn1 from ``platform_verifiers.android.schema``. The root is a test root:
trust it explicitly by passing ``result.anchor`` (never a Google root).

    synth = make_chain(challenge=b"...", package_name="com.example.app")
    verify_android_attestation(chain=synth.chain, anchors=[synth.anchor], ...)
    synth.leaf_key  # the attested EC P-256 private key (signs the key proof)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pyasn1.codec.der import encoder
from pyasn1.type import univ

from platform_verifiers.anchors import TrustAnchor, load_anchor
from platform_verifiers.android import schema
from platform_verifiers.android.parse import SecurityLevel, VerifiedBootState

KEY_DESCRIPTION_OID = x509.ObjectIdentifier(schema.KEY_DESCRIPTION_OID)
PROVISIONING_INFO_OID = x509.ObjectIdentifier(schema.PROVISIONING_INFO_OID)
DEFAULT_PACKAGE = "com.example.wallet"
DEFAULT_SIGNER = hashlib.sha256(b"example signing certificate").digest()
DEFAULT_BOOT_KEY = hashlib.sha256(b"example verified boot key").digest()
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class TestRoot:
    __test__ = False  # a helper, not a test class

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def anchor(self) -> TrustAnchor:
        pem = self.certificate.public_bytes(serialization.Encoding.PEM)
        return load_anchor("synthetic_test_root", pem, source="tests/android/synth.py")


@dataclass(frozen=True)
class SynthChain:
    chain: list[bytes]  # DER, leaf first; ends with the root when include_root
    leaf_key: ec.EllipticCurvePrivateKey
    root: TestRoot
    intermediate_keys: list[ec.EllipticCurvePrivateKey] = field(default_factory=list)

    @property
    def anchor(self) -> TrustAnchor:
        return self.root.anchor


def _name(cn: str | x509.Name) -> x509.Name:
    if isinstance(cn, x509.Name):
        return cn
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def factory_name(serial: str = "87f4514475ba0a2b", title: str | None = "TEE") -> x509.Name:
    """An OEM intermediate's subject as factory chains have it (serialNumber, title)."""
    attributes = [x509.NameAttribute(NameOID.SERIAL_NUMBER, serial)]
    if title is not None:
        attributes.append(x509.NameAttribute(NameOID.TITLE, title))
    return x509.Name(attributes)


# The RKP intermediate directly under Google's roots (DER order: O first, then CN).
DROID_CA2_NAME = x509.Name(
    [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Google LLC"),
        x509.NameAttribute(NameOID.COMMON_NAME, "Droid CA2"),
    ]
)


def make_root(common_name: str = "Synthetic Attestation Root") -> TestRoot:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=3650))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return TestRoot(key, cert)


def _element(number: int, value: object) -> bytes:
    """DER of one AuthorizationList entry ``[number] EXPLICIT value``, typed by the schema."""
    name, inner = schema.AUTHORIZATION_TAGS[number]
    del name
    typed = schema.explicit(number, inner)
    if isinstance(inner, univ.Null):
        obj = typed.clone("")
    elif isinstance(inner, univ.SetOf):
        obj = typed.clone()
        for item in value:  # type: ignore[attr-defined]
            obj.append(item)
    elif isinstance(inner, schema.RootOfTrust):
        obj = typed.clone()
        boot_key, locked, state, boot_hash = value  # type: ignore[misc]
        obj["verifiedBootKey"] = boot_key
        obj["deviceLocked"] = locked
        obj["verifiedBootState"] = int(state)
        if boot_hash is not None:
            obj["verifiedBootHash"] = boot_hash
    else:
        obj = typed.clone(value)
    return bytes(encoder.encode(obj))


def encode_attestation_application_id(
    packages: Sequence[tuple[str, int]], signer_digests: Sequence[bytes]
) -> bytes:
    app = schema.AttestationApplicationId()
    infos = app["packageInfos"]
    for package, version in packages:
        info = schema.AttestationPackageInfo()
        info["packageName"] = package.encode()
        info["version"] = version
        infos.append(info)
    digests = app["signatureDigests"]
    for digest in signer_digests:
        digests.append(digest)
    return bytes(encoder.encode(app))


def encode_authorization_list(
    entries: Mapping[int, object], raw_entries: Mapping[int, bytes] | None = None
) -> list[bytes]:
    """Encoded entries in tag order; ``raw_entries`` adds pre-encoded (e.g. unknown) tags."""
    encoded = {n: _element(n, v) for n, v in entries.items()}
    encoded.update(raw_entries or {})
    return [encoded[n] for n in sorted(encoded)]


def encode_key_description(
    *,
    attestation_version: int = 300,
    attestation_security_level: SecurityLevel = SecurityLevel.TRUSTED_ENVIRONMENT,
    keymint_version: int = 300,
    keymint_security_level: SecurityLevel | None = None,
    challenge: bytes = b"challenge",
    software: Sequence[bytes] = (),
    hardware: Sequence[bytes] = (),
) -> bytes:
    kd = schema.KeyDescriptionForParsing()
    kd["attestationVersion"] = attestation_version
    kd["attestationSecurityLevel"] = int(attestation_security_level)
    kd["keyMintVersion"] = keymint_version
    kd["keyMintSecurityLevel"] = int(
        attestation_security_level if keymint_security_level is None else keymint_security_level
    )
    kd["attestationChallenge"] = challenge
    kd["uniqueId"] = b""
    for name, elements in (("softwareEnforced", software), ("hardwareEnforced", hardware)):
        target = kd[name]
        for element in elements:
            target.append(univ.Any(element))
    return bytes(encoder.encode(kd))


def default_key_description(
    *,
    challenge: bytes = b"challenge",
    package_name: str = DEFAULT_PACKAGE,
    signer_digest: bytes = DEFAULT_SIGNER,
    security_level: SecurityLevel = SecurityLevel.TRUSTED_ENVIRONMENT,
    keymint_security_level: SecurityLevel | None = None,
    verified_boot_state: VerifiedBootState = VerifiedBootState.VERIFIED,
    device_locked: bool = True,
    verified_boot_key: bytes = DEFAULT_BOOT_KEY,
    os_patch_level: int = 202601,
    origin: int = 0,
    purposes: Sequence[int] = (2,),
    algorithm: int = 3,
    ec_curve: int | None = 1,
    attestation_version: int = 300,
    extra_hardware: Mapping[int, object] | None = None,
    unknown_hardware: Mapping[int, bytes] | None = None,
) -> bytes:
    """A KeyDescription like a KeyMint 3 device's for an EC P-256 signing key."""
    app_id = encode_attestation_application_id([(package_name, 1)], [signer_digest])
    hardware: dict[int, object] = {
        1: purposes,
        2: algorithm,
        3: 256,
        5: (4,),
        503: None,
        702: origin,
        704: (verified_boot_key, device_locked, verified_boot_state, b"\x33" * 32),
        705: 150000,
        706: os_patch_level,
        718: os_patch_level * 100 + 5,
        719: os_patch_level * 100 + 5,
    }
    if ec_curve is not None:
        hardware[10] = ec_curve
    hardware.update(extra_hardware or {})
    software: dict[int, object] = {701: 1_767_225_600_000, 709: app_id}
    return encode_key_description(
        attestation_version=attestation_version,
        attestation_security_level=security_level,
        keymint_version=attestation_version,
        keymint_security_level=keymint_security_level,
        challenge=challenge,
        software=encode_authorization_list(software),
        hardware=encode_authorization_list(hardware, unknown_hardware),
    )


def make_certificate(
    *,
    subject: str | x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    signing_key: ec.EllipticCurvePrivateKey,
    ca: bool | None,
    not_before: datetime,
    not_after: datetime,
    key_description: bytes | None = None,
    provisioning_info: bool = False,
    serial: int | None = None,
    path_length: int | None = None,
    extra_extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if ca is not None:
        length = path_length if ca else None
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=length), True)
    if key_description is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(KEY_DESCRIPTION_OID, key_description), critical=False
        )
    if provisioning_info:
        # CBOR map {1: certsIssued}; the verifier only looks for the extension's presence.
        builder = builder.add_extension(
            x509.UnrecognizedExtension(PROVISIONING_INFO_OID, bytes.fromhex("a1010a")), False
        )
    for extension, critical in extra_extensions:
        builder = builder.add_extension(extension, critical)
    return builder.sign(signing_key, hashes.SHA256())


def make_chain(
    *,
    challenge: bytes = b"challenge",
    package_name: str = DEFAULT_PACKAGE,
    signer_digest: bytes = DEFAULT_SIGNER,
    security_level: SecurityLevel = SecurityLevel.TRUSTED_ENVIRONMENT,
    keymint_security_level: SecurityLevel | None = None,
    verified_boot_state: VerifiedBootState = VerifiedBootState.VERIFIED,
    device_locked: bool = True,
    verified_boot_key: bytes = DEFAULT_BOOT_KEY,
    os_patch_level: int = 202601,
    origin: int = 0,
    purposes: Sequence[int] = (2,),
    key_description: bytes | None = None,
    root: TestRoot | None = None,
    intermediates: int = 2,
    intermediate_ca: Sequence[bool | None] | None = None,
    intermediate_path_length: Sequence[int | None] | None = None,
    include_root: bool = True,
    rkp: bool = False,
    intermediate_validity: tuple[datetime, datetime] | None = None,
    leaf_key: ec.EllipticCurvePrivateKey | None = None,
    leaf_signed_by: ec.EllipticCurvePrivateKey | None = None,
    leaf_serial: int | None = None,
    under_root_name: x509.Name | None = None,
    extra_extensions: Sequence[tuple[int, x509.ExtensionType, bool]] = (),
) -> SynthChain:
    """A chain leaf -> ``intermediates`` CAs -> test root, like a real device's.

    ``key_description`` overrides the encoded extension (e.g. truncated bytes);
    ``intermediate_ca`` sets each intermediate's cA flag, nearest the leaf first (None:
    no basicConstraints); ``rkp`` marks the leaf's issuer with ProvisioningInfo;
    ``leaf_signed_by`` signs the leaf with another key (a broken signature);
    ``under_root_name`` names the intermediate the root signs (default ``CN=Synthetic
    Intermediate N``, which classifies as unknown; ``factory_name()`` or
    ``DROID_CA2_NAME`` for the other classes); ``extra_extensions`` adds (certificate
    index, extension, critical) to the leaf (0) or an intermediate (1..).
    """
    root = root or make_root()
    now = datetime.now(UTC)
    not_before, not_after = intermediate_validity or (
        now - timedelta(days=365),
        now + timedelta(days=365),
    )
    flags = list(intermediate_ca) if intermediate_ca is not None else [True] * intermediates
    # Build top-down: root -> intermediates[-1] -> ... -> intermediates[0] -> leaf.
    issuer_name = root.certificate.subject
    issuer_key = root.key
    upper: list[x509.Certificate] = []
    keys: list[ec.EllipticCurvePrivateKey] = []
    for depth in reversed(range(intermediates)):
        key = ec.generate_private_key(ec.SECP256R1())
        top = depth == intermediates - 1
        cert = make_certificate(
            subject=under_root_name if top and under_root_name else f"Synthetic Intermediate {depth}",
            issuer=issuer_name,
            public_key=key.public_key(),
            signing_key=issuer_key,
            ca=flags[depth],
            not_before=not_before,
            not_after=not_after,
            provisioning_info=rkp and depth == 0,
            path_length=intermediate_path_length[depth] if intermediate_path_length else None,
            extra_extensions=[(e, c) for i, e, c in extra_extensions if i == depth + 1],
        )
        upper.insert(0, cert)
        keys.insert(0, key)
        issuer_name, issuer_key = cert.subject, key
    leaf_key = leaf_key or ec.generate_private_key(ec.SECP256R1())
    kd = key_description
    if kd is None:
        kd = default_key_description(
            challenge=challenge,
            package_name=package_name,
            signer_digest=signer_digest,
            security_level=security_level,
            keymint_security_level=keymint_security_level,
            verified_boot_state=verified_boot_state,
            device_locked=device_locked,
            verified_boot_key=verified_boot_key,
            os_patch_level=os_patch_level,
            origin=origin,
            purposes=purposes,
        )
    leaf = make_certificate(
        subject="Android Keystore Key",
        issuer=issuer_name,
        public_key=leaf_key.public_key(),
        signing_key=leaf_signed_by or issuer_key,
        ca=None,
        not_before=EPOCH,
        not_after=datetime(2048, 1, 1, tzinfo=UTC),
        key_description=kd,
        serial=leaf_serial if leaf_serial is not None else 1,
        extra_extensions=[(e, c) for i, e, c in extra_extensions if i == 0],
    )
    certs = [leaf, *upper] + ([root.certificate] if include_root else [])
    return SynthChain(
        chain=[c.public_bytes(serialization.Encoding.DER) for c in certs],
        leaf_key=leaf_key,
        root=root,
        intermediate_keys=keys,
    )


def extend_below_leaf(synth: SynthChain, *, challenge: bytes = b"challenge") -> list[bytes]:
    """The known forgery: use the attested leaf key as a CA for a fresh "leaf"."""
    genuine_leaf = x509.load_der_x509_certificate(synth.chain[0])
    forged_key = ec.generate_private_key(ec.SECP256R1())
    forged = make_certificate(
        subject="Android Keystore Key",
        issuer=genuine_leaf.subject,
        public_key=forged_key.public_key(),
        signing_key=synth.leaf_key,
        ca=None,
        not_before=EPOCH,
        not_after=datetime(2048, 1, 1, tzinfo=UTC),
        key_description=default_key_description(challenge=challenge),
    )
    return [forged.public_bytes(serialization.Encoding.DER), *synth.chain]
