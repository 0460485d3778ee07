"""Read attestation certificates tolerantly, and check one certificate's signature.

Real attestation chains break strict X.509 parsers (see ../shared/vectors/MANIFEST.json):
a leaf whose ecdsa-with-SHA256 AlgorithmIdentifier carries an explicit NULL (pyca
refuses to load it) and a leaf with an unparsable CRL Distribution Points extension
(pyca refuses its extension list). Google's reference verifier accepts both, so we read
each certificate with pyca/cryptography (fast) and fall back to pyasn1 (RFC 5280
schema) for the parts pyca rejects. The extension list is read as the certificate
encodes it (der.py), never through pyca's parsed extensions, so an extension pyca cannot
parse is no reason for the slow reader; extensions are never interpreted beyond the few
this verifier needs: basicConstraints, keyUsage, the KeyDescription and the RKP
ProvisioningInfo.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from pyasn1.codec.ber import decoder as ber_decoder
from pyasn1.codec.der import encoder as der_encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import namedtype, univ
from pyasn1_modules import rfc4055, rfc5280

from platform_verifiers.android import extensions as extension_checks
from platform_verifiers.android.schema import KEY_DESCRIPTION_OID, PROVISIONING_INFO_OID
from platform_verifiers.der import DER_TRUE, RawExtension, canonical_key, certificate_parts
from platform_verifiers.errors import ASN1_DECODE_ERRORS, VerificationError

_BASIC_CONSTRAINTS_OID = "2.5.29.19"

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "1.3.14.3.2.26": hashes.SHA1,
    "2.16.840.1.101.3.4.2.1": hashes.SHA256,
    "2.16.840.1.101.3.4.2.2": hashes.SHA384,
    "2.16.840.1.101.3.4.2.3": hashes.SHA512,
}
# signatureAlgorithm OID -> (scheme, hash); RSA-PSS takes its hash from the parameters.
_SIGNATURE_ALGORITHMS: dict[str, tuple[str, type[hashes.HashAlgorithm] | None]] = {
    "1.2.840.113549.1.1.5": ("rsa-pkcs1", hashes.SHA1),
    "1.2.840.113549.1.1.11": ("rsa-pkcs1", hashes.SHA256),
    "1.2.840.113549.1.1.12": ("rsa-pkcs1", hashes.SHA384),
    "1.2.840.113549.1.1.13": ("rsa-pkcs1", hashes.SHA512),
    "1.2.840.10045.4.3.2": ("ecdsa", hashes.SHA256),
    "1.2.840.10045.4.3.3": ("ecdsa", hashes.SHA384),
    "1.2.840.10045.4.3.4": ("ecdsa", hashes.SHA512),
    "1.2.840.113549.1.1.10": ("rsa-pss", None),
    "1.3.101.112": ("ed25519", None),
    # FIPS 204 ML-DSA, pure, empty context (RFC 9881): KeyMint 4 has ML-DSA keys, and an
    # attestation key of one would sign its leaves so; verified when pyca can (below)
    "2.16.840.1.101.3.4.3.17": ("ml-dsa-44", None),
    "2.16.840.1.101.3.4.3.18": ("ml-dsa-65", None),
    "2.16.840.1.101.3.4.3.19": ("ml-dsa-87", None),
}
try:  # cryptography >= 47 built with an OpenSSL that has ML-DSA; else such links do not verify
    from cryptography.hazmat.primitives.asymmetric import mldsa

    _ML_DSA_KEYS: dict[str, type] = {
        "ml-dsa-44": mldsa.MLDSA44PublicKey,
        "ml-dsa-65": mldsa.MLDSA65PublicKey,
        "ml-dsa-87": mldsa.MLDSA87PublicKey,
    }
except ImportError:  # pragma: no cover - older cryptography
    _ML_DSA_KEYS = {}


@dataclass(frozen=True)
class SignatureAlgorithm:
    scheme: str  # "rsa-pkcs1", "rsa-pss", "ecdsa", "ed25519", "ml-dsa-44", "-65", "-87"
    hash: hashes.HashAlgorithm | None
    pss_salt_length: int | None = None


# One extension as it is encoded (oid, critical, value: the DER inside extnValue): the
# chain's fail-closed checks read these.
ExtensionInfo = RawExtension


@dataclass(frozen=True)
class ChainCertificate:
    """The facts about one chain certificate that the verifier uses."""

    der: bytes
    tbs: bytes
    signature_algorithm: SignatureAlgorithm | None  # None: an algorithm we cannot check
    signature: bytes
    spki_der: bytes
    serial: int
    not_before: datetime
    not_after: datetime
    is_ca: bool | None  # basicConstraints cA; None when the extension is absent
    path_length: int | None
    key_descriptions: tuple[bytes, ...]  # values of every KeyDescription extension
    has_provisioning_info: bool
    # the key pyca loaded while decoding (None: not loadable by pyca), kept so that a
    # verification loads each key once; derived from spki_der, so not part of equality
    loaded_key: PublicKeyTypes | None = field(default=None, compare=False, repr=False)
    # pyca's certificate object when pyca read it: the subject is read from it, not parsed
    # again; derived from der, so not part of equality either
    pyca: x509.Certificate | None = field(default=None, compare=False, repr=False)
    # Every extension in encoding order, duplicates kept, for the fail-closed checks of
    # platform_verifiers/android/extensions.py; defaulted so other constructors still work.
    extensions: tuple[ExtensionInfo, ...] = ()

    @cached_property
    def serial_hex(self) -> str:
        """Lowercase hex without leading zeros, the form Google's status list uses."""
        return format(self.serial, "x")

    # What the chain's checks read of the extensions, kept with the certificate like the
    # subject below: with the decoded-intermediate cache, the same intermediates' keyUsage
    # and ProvisioningInfo were decoded again on every verification (~10% of a cached one).
    @cached_property
    def extension_problem(self) -> tuple[str, str, str] | None:
        """The reason to refuse this certificate's extensions, if any (extensions.py)."""
        return extension_checks.extension_problem(self.extensions)

    @cached_property
    def may_sign_certificates(self) -> bool:
        """keyUsage absent or with keyCertSign (extensions.py)."""
        return extension_checks.may_sign_certificates(self.extensions)

    @cached_property
    def subject_name(self) -> x509.Name | None:
        """The subject as pyca reads it (None when pyca cannot read the certificate).

        Parsed on first use and kept with the certificate: with the decoded-intermediate
        cache, the provisioning classification reads the same intermediate's subject on
        every verification (re-parsing it was ~10% of a cached one). Only the
        classification uses it (platform_verifiers/android/provisioning.py).
        """
        try:
            cert = self.pyca or x509.load_der_x509_certificate(self.der)
            return cert.subject
        except (ValueError, x509.InvalidVersion):
            return None

    @cached_property
    def subject_rfc4514(self) -> str | None:
        """:attr:`subject_name` in RFC 4514 form (None: unreadable), kept like it: the
        classification compares it on every verification (3% of a cached one)."""
        name = self.subject_name
        if name is None:
            return None
        try:
            return name.rfc4514_string()
        except ValueError:
            return None

    def public_key(self) -> PublicKeyTypes:
        if self.loaded_key is not None:
            return self.loaded_key
        return serialization.load_der_public_key(self.spki_der)


def _malformed(index: int, why: str) -> VerificationError:
    return VerificationError(
        "certificate_malformed",
        "a certificate in the chain cannot be decoded",
        index=index,
        why=why,
    )


_SHA1 = "1.3.14.3.2.26"
_MGF1 = "1.2.840.113549.1.1.8"
_MAX_SALT = 512


def _pss(params_der: bytes | None) -> SignatureAlgorithm | None:
    """RSASSA-PSS-params (RFC 4055 3.1), or None for any we do not check: a hash we do not
    know, a mask generation other than MGF1 with the message's own hash (every issuer we
    know of uses that, and the signature is checked with it: a certificate declaring
    another is refused, not checked with parameters it does not declare), a trailer field
    other than 1, or anything after the parameters. Absent fields take RFC 4055's
    defaults (SHA-1, MGF1 with SHA-1, salt 20)."""
    if not params_der:
        return SignatureAlgorithm("rsa-pss", hashes.SHA1(), 20)
    try:
        params, rest = ber_decoder.decode(params_der, asn1Spec=rfc4055.RSASSA_PSS_params())
        hash_oid = _SHA1
        if params["hashAlgorithm"].isValue:
            hash_oid = str(params["hashAlgorithm"]["algorithm"])
        mgf_oid, mgf_hash_oid = _MGF1, _SHA1
        mgf = params["maskGenAlgorithm"]
        if mgf.isValue:
            mgf_oid = str(mgf["algorithm"])
            inner, inner_rest = ber_decoder.decode(
                bytes(mgf["parameters"]), asn1Spec=rfc5280.AlgorithmIdentifier()
            )
            if inner_rest:
                return None
            mgf_hash_oid = str(inner["algorithm"])
        salt = int(params["saltLength"]) if params["saltLength"].isValue else 20
        trailer = int(params["trailerField"]) if params["trailerField"].isValue else 1
    except ASN1_DECODE_ERRORS:
        return None
    hash_cls = _HASHES.get(hash_oid)
    if rest or hash_cls is None or (mgf_oid, mgf_hash_oid) != (_MGF1, hash_oid) or trailer != 1:
        return None
    if not 0 <= salt <= _MAX_SALT:
        return None  # negative (pyca would raise), or longer than any RSA-4096 block holds
    return SignatureAlgorithm("rsa-pss", hash_cls(), salt)


_RSA_PSS = "1.2.840.113549.1.1.10"
_NULL = b"\x05\x00"
# the algorithms without parameters to read (SignatureAlgorithm and hashes are immutable)
_PLAIN_ALGORITHMS: dict[str, SignatureAlgorithm] = {
    oid: SignatureAlgorithm(scheme, hash_cls() if hash_cls else None)
    for oid, (scheme, hash_cls) in _SIGNATURE_ALGORITHMS.items()
    if scheme != "rsa-pss"
}


def _signature_algorithm(oid: str, params_der: bytes | None) -> SignatureAlgorithm | None:
    known = _SIGNATURE_ALGORITHMS.get(oid)
    if known is None:
        return None
    scheme, hash_cls = known
    if scheme == "rsa-pss":
        return _pss(params_der)
    if params_der not in (None, _NULL):
        # these algorithms take no parameters, or NULL (RSA; and a real device's ECDSA leaf
        # sends one, MANIFEST.json): anything else declares something we do not check
        return None
    return _PLAIN_ALGORITHMS[oid]


class _RawCertificate(univ.Sequence):  # type: ignore[misc]
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("tbs", univ.Any()),
        namedtype.NamedType("alg", univ.Any()),
        namedtype.NamedType("sig", univ.BitString()),
    )


def _split_certificate(der: bytes) -> tuple[bytes, bytes]:
    """Raw encodings of tbsCertificate and signatureAlgorithm, via the RFC 5280 schema.

    The signature covers the tbsCertificate bytes exactly as sent; pyasn1 re-encoding
    could normalise them, so we read the outer SEQUENCE with ``Any`` components.
    """
    outer, rest = ber_decoder.decode(der, asn1Spec=_RawCertificate())
    if rest:
        raise PyAsn1Error("trailing data after certificate")
    return bytes(outer["tbs"]), bytes(outer["alg"])


def _extension_infos_from_tbs(tbs: Any) -> tuple[ExtensionInfo, ...]:
    extensions = tbs["extensions"]
    if not extensions.isValue:
        return ()
    return tuple(
        ExtensionInfo(str(e["extnID"]), bool(e["critical"]), bytes(e["extnValue"]))
        for e in extensions
    )


def _basic_constraints(value: bytes) -> tuple[bool, int | None]:
    plain = basic_constraints_der(value)
    if plain is not None:
        return plain
    bc, rest = ber_decoder.decode(value, asn1Spec=rfc5280.BasicConstraints())
    if rest:  # something after it: not one BasicConstraints (keyUsage is read alike)
        raise ValueError("data after the BasicConstraints")
    path = int(bc["pathLenConstraint"]) if bc["pathLenConstraint"].isValue else None
    return bool(bc["cA"]), path


def basic_constraints_der(value: bytes) -> tuple[bool, int | None] | None:
    """(cA, pathLenConstraint) of a BasicConstraints in plain DER, else None (pyasn1 reads
    it then, the schema of record; tests/android pins that both agree where this answers).

    DER: SEQUENCE { cA BOOLEAN DEFAULT FALSE (present only as TRUE, 0xFF), pathLenConstraint
    INTEGER (0..MAX) OPTIONAL (minimal, non-negative) }, short lengths, nothing after.
    """
    if len(value) < 2 or value[0] != 0x30 or value[1] != len(value) - 2:
        return None
    ca = value[2:5] == DER_TRUE
    rest = value[5:] if ca else value[2:]
    if not rest:
        return ca, None
    if rest[0] != 0x02 or len(rest) < 3 or rest[1] != len(rest) - 2 or rest[1] > 8:
        return None
    if rest[2] & 0x80 or (rest[2] == 0 and len(rest) > 3 and not rest[3] & 0x80):
        return None  # negative, or not minimal
    return ca, int.from_bytes(rest[2:], "big")


def _from_raw_extensions(
    extensions: tuple[ExtensionInfo, ...],
) -> tuple[bool | None, int | None, tuple[bytes, ...], bool]:
    is_ca: bool | None = None
    path_length: int | None = None
    key_descriptions = []
    provisioning = False
    for oid, _, value in extensions:
        if oid == _BASIC_CONSTRAINTS_OID:
            is_ca, path_length = _basic_constraints(value)
        elif oid == KEY_DESCRIPTION_OID:
            key_descriptions.append(value)
        elif oid == PROVISIONING_INFO_OID:
            provisioning = True
    return is_ca, path_length, tuple(key_descriptions), provisioning


def _time(value: Any) -> datetime:
    moment: datetime = value.getComponent().asDateTime
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


#: elements (outside OCTET and BIT STRINGs) a certificate may have for the tolerant reader:
#: the real certificates in ../shared/vectors have 84 at most (a KeyDescription is inside an
#: OCTET STRING, not counted);
#: pyasn1 took ~19 ms for one of ~2,800 (700 extensions), before any signature was checked,
#: so ten such junk certificates cost a request 0.19 s of CPU (found in review)
MAX_TOLERANT_ELEMENTS = 1000


def _elements_over(der: bytes, limit: int) -> bool:
    """Whether ``der`` holds more than ``limit`` elements, counting into constructed ones.

    A cheap walk of the tag-length headers; anything it cannot read (an indefinite length,
    a length past its parent) stops it with False: pyasn1 then decides, as before."""
    count, stack = 0, [(0, len(der))]
    while stack:
        at, end = stack.pop()
        while at < end:
            tag, at = der[at], at + 1
            if tag & 0x1F == 0x1F:  # a tag number in the octets that follow
                while at < end and der[at] & 0x80:
                    at += 1
                at += 1
            if at >= end:
                return False
            length, at = der[at], at + 1
            if length & 0x80:
                width = length & 0x7F
                if not 0 < width <= 4:
                    return False
                length, at = int.from_bytes(der[at : at + width], "big"), at + width
            if at + length > end:
                return False
            count += 1
            if count > limit:
                return True
            if tag & 0x20:
                stack.append((at + length, end))
                end = at + length
            else:
                at += length
    return False


def _decode_with_pyasn1(der: bytes) -> ChainCertificate:
    if _elements_over(der, MAX_TOLERANT_ELEMENTS):
        raise ValueError("too many elements for the tolerant reader")
    tbs_raw, _ = _split_certificate(der)
    cert, _ = ber_decoder.decode(der, asn1Spec=rfc5280.Certificate())
    tbs = cert["tbsCertificate"]
    if int(tbs["version"]) != 2:
        # Only v3 certificates carry extensions, and every attestation certificate has
        # some; an unknown version is not read leniently (pyca refuses it too).
        raise ValueError("not an X.509 v3 certificate")
    alg = cert["signatureAlgorithm"]
    params = bytes(alg["parameters"]) if alg["parameters"].isValue else None
    infos = _extension_infos_from_tbs(tbs)
    is_ca, path_length, key_descriptions, provisioning = _from_raw_extensions(infos)
    return ChainCertificate(
        der=der,
        tbs=tbs_raw,
        signature_algorithm=_signature_algorithm(str(alg["algorithm"]), params),
        signature=cert["signature"].asOctets(),
        spki_der=der_encoder.encode(tbs["subjectPublicKeyInfo"]),
        serial=int(tbs["serialNumber"]),
        not_before=_time(tbs["validity"]["notBefore"]),
        not_after=_time(tbs["validity"]["notAfter"]),
        is_ca=is_ca,
        path_length=path_length,
        key_descriptions=key_descriptions,
        has_provisioning_info=provisioning,
        extensions=infos,
    )


def _decode_with_pyca(der: bytes) -> ChainCertificate:
    cert = x509.load_der_x509_certificate(der)
    if cert.version is not x509.Version.v3:
        # as the tolerant reader: only v3 carries extensions (it refuses the certificate)
        raise ValueError("not an X.509 v3 certificate")
    # the extensions as sent, not through cert.extensions (der.py says why): pyca's loading
    # has checked the list's encoding; the few values read here are read by our own schema
    # (the tolerant reader's), and check_extensions refuses duplicates, as pyca would
    tbs, spki, infos = certificate_parts(der)
    is_ca, path_length, key_descriptions, provisioning = _from_raw_extensions(infos)
    oid = cert.signature_algorithm_oid.dotted_string
    algorithm: SignatureAlgorithm | None
    if oid == _RSA_PSS:
        # pyca parses the PSS parameters (a ValueError if it cannot: the tolerant reader then
        # decides; UnsupportedAlgorithm for a mask generation hash it does not know, which
        # no reader checks: refused, as chain_signature_invalid); re-read them for the salt
        try:
            cert.signature_algorithm_parameters  # noqa: B018
            algorithm = _pss(_split_params(der))
        except UnsupportedAlgorithm:
            algorithm = None
    else:
        # pyca's load checked the others' parameters (NULL or absent): nothing to read
        # (reading them was 1 us a certificate)
        algorithm = _signature_algorithm(oid, None)
    return ChainCertificate(
        der=der,
        tbs=tbs,
        signature_algorithm=algorithm,
        signature=cert.signature,
        spki_der=spki,
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        is_ca=is_ca,
        path_length=path_length,
        key_descriptions=key_descriptions,
        has_provisioning_info=provisioning,
        loaded_key=_pyca_key(cert),
        pyca=cert,
        extensions=infos,
    )


def _pyca_key(cert: x509.Certificate) -> PublicKeyTypes | None:
    try:
        return cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return None


def _split_params(der: bytes) -> bytes | None:
    _, alg_raw = _split_certificate(der)
    alg, _ = ber_decoder.decode(alg_raw, asn1Spec=rfc5280.AlgorithmIdentifier())
    return bytes(alg["parameters"]) if alg["parameters"].isValue else None


# What makes pyca (or our reading of its extensions) give up on a certificate.
# InvalidVersion is not a ValueError: found by the fuzz suite (tests/fuzz).
_PYCA_REFUSALS: tuple[type[Exception], ...] = (
    *ASN1_DECODE_ERRORS,
    x509.DuplicateExtension,
    x509.InvalidVersion,
)


def decode_certificate(der: bytes, index: int) -> ChainCertificate:
    """Decode one DER certificate; ``certificate_malformed`` if neither reader can, or if its
    key is not in its canonical encoding (keys are compared by their bytes: der.py)."""
    try:
        cert = _decode_with_pyca(der)
    except _PYCA_REFUSALS:
        # pyca refuses it, or its extensions need the tolerant reader and that failed too
        try:
            cert = _decode_with_pyasn1(der)
        except ASN1_DECODE_ERRORS as exc:
            raise _malformed(index, type(exc).__name__) from exc
    try:
        canonical = canonical_key(cert.spki_der)
    except IndexError:
        canonical = False
    if not canonical:
        raise _malformed(index, "key_not_canonical")
    return cert


def signature_valid(child: ChainCertificate, issuer_key: PublicKeyTypes) -> bool:
    """Whether ``issuer_key`` signed ``child`` (RSA PKCS#1 v1.5, RSA-PSS, ECDSA, Ed25519,
    ML-DSA). Any other algorithm, or a key of another type than the algorithm's, is not a
    signature this verifier checks: False (``chain_signature_invalid``)."""
    alg = child.signature_algorithm
    if alg is None:
        return False
    digest = alg.hash
    try:
        if alg.scheme == "ed25519" and isinstance(issuer_key, ed25519.Ed25519PublicKey):
            issuer_key.verify(child.signature, child.tbs)
        elif alg.scheme in _ML_DSA_KEYS and isinstance(issuer_key, _ML_DSA_KEYS[alg.scheme]):
            issuer_key.verify(child.signature, child.tbs)  # type: ignore[attr-defined]
        elif digest is None:
            return False
        elif alg.scheme == "rsa-pkcs1" and isinstance(issuer_key, rsa.RSAPublicKey):
            issuer_key.verify(child.signature, child.tbs, padding.PKCS1v15(), digest)
        elif alg.scheme == "rsa-pss" and isinstance(issuer_key, rsa.RSAPublicKey):
            salt = alg.pss_salt_length if alg.pss_salt_length is not None else 20
            pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=salt)
            issuer_key.verify(child.signature, child.tbs, pss, digest)
        elif alg.scheme == "ecdsa" and isinstance(issuer_key, ec.EllipticCurvePublicKey):
            issuer_key.verify(child.signature, child.tbs, ec.ECDSA(digest))
        else:
            return False
    except (InvalidSignature, ValueError):
        # ValueError: pyca refuses the parameters for this key, e.g. an RSA-PSS digest
        # and salt too large for the modulus (a 512-bit key), found in review: the link
        # does not verify
        return False
    return True
