"""Walk an App Attest ``x5c`` chain up to a pinned root.

Apple, "Validating apps that connect to your server", step 1: "Verify that the x5c array
contains the intermediate and leaf certificates for App Attest, starting from the credential
certificate in the first data buffer in the array (credcert). Verify the validity of the
certificates using Apple's App Attest root certificate."
https://developer.apple.com/documentation/devicecheck/validating-apps-that-connect-to-your-server

A custom walk with ``Certificate.verify_directly_issued_by`` is used instead of a web-PKI
path builder: the chain is fixed (leaf first), there is no revocation to fetch, and every
failure needs its own stable code.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import partial

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from ..anchors import TrustAnchor
from ..errors import VerificationError
from ..linkcache import VerifiedLinkCache, link_key

#: Leaf + intermediate today; a little headroom for a future cross-signed intermediate.
MAX_CHAIN_LENGTH = 4


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _check_validity(cert: x509.Certificate, now: datetime, *, index: int) -> None:
    if now < cert.not_valid_before_utc:
        raise VerificationError(
            "certificate_not_yet_valid",
            "a certificate in the chain is not yet valid",
            index=index,
            not_before=cert.not_valid_before_utc.isoformat(),
        )
    if now > cert.not_valid_after_utc:
        raise VerificationError(
            "certificate_expired",
            "a certificate in the chain has expired",
            index=index,
            not_after=cert.not_valid_after_utc.isoformat(),
        )


def _is_ca(cert: x509.Certificate) -> bool:
    """cA=TRUE, and keyCertSign when keyUsage is present (RFC 5280 4.2.1.3, 4.2.1.9)."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    except (ValueError, x509.DuplicateExtension):
        return False  # unparsable or duplicated extensions: not a usable CA
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return constraints.ca
    except (ValueError, x509.DuplicateExtension):
        return False
    return constraints.ca and usage.key_cert_sign


def _signed_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        # ValueError: issuer name mismatch or bad algorithm parameters; TypeError:
        # unsupported key type. All mean "this issuer did not sign this child".
        return False
    return True


def _link_verified(
    child: x509.Certificate,
    issuer: x509.Certificate,
    cache: VerifiedLinkCache | None,
    ders: Sequence[bytes] | None = None,
) -> bool:
    """Whether ``issuer`` signed ``child``, answered from ``cache`` when it already knows."""
    if cache is None:
        return _signed_by(child, issuer)
    child_der, issuer_der = ders if ders is not None else (_der(child), _der(issuer))
    key = link_key(child_der, issuer_der)
    if key in cache:
        return True
    if not _signed_by(child, issuer):
        return False
    cache.add(key)
    return True


def load_chain(
    x5c: Sequence[bytes], verified_cache: VerifiedLinkCache | None = None
) -> tuple[x509.Certificate, ...]:
    """Parse the DER certificates of ``x5c`` (leaf first).

    With ``verified_cache``, a certificate above the leaf whose exact bytes were parsed
    before is taken from it (every device sends Apple's same intermediate).
    """
    if not 1 <= len(x5c) <= MAX_CHAIN_LENGTH:
        raise VerificationError(
            "attestation_malformed",
            "x5c has an unexpected number of certificates",
            length=len(x5c),
            limit=MAX_CHAIN_LENGTH,
        )
    certs = []
    top = len(x5c) - 1
    for index, der in enumerate(x5c):
        if index > 0 and verified_cache is not None:
            # the top certificate is parsed further (its issuer name): cached apart, so a
            # certificate first seen below the top is read again when it arrives on top
            kind = "apple-certificate-top" if index == top else "apple-certificate"
            parse = partial(_parse, index=index, top=index == top)
            certs.append(verified_cache.decoded(kind, der, parse))
        else:
            certs.append(_parse(der, index=index, top=index == top))
    return tuple(certs)


def _parse(der: bytes, *, index: int, top: bool) -> x509.Certificate:
    try:
        cert = x509.load_der_x509_certificate(der)
        if top:
            # pyca parses names lazily: read the top certificate's issuer now (the anchor
            # match compares it in Python) so that a broken one is malformed evidence here,
            # not an exception there (found by tests/fuzz). Names below it are compared
            # only inside pyca's signature check, which refuses a broken one (a bad link);
            # building them in Python cost as much as parsing the whole certificate.
            cert.issuer  # noqa: B018
    except (ValueError, TypeError, x509.InvalidVersion) as exc:
        # InvalidVersion: found by tests/fuzz; TypeError: a name attribute of a type pyca
        # does not read as a string (a BIT STRING), found in review
        raise VerificationError(
            "attestation_malformed", "x5c holds an unparsable certificate", index=index
        ) from exc
    return cert


#: RFC 5280 4.2: a critical extension the verifier does not recognise rejects the
#: certificate. Apple's App Attest certificates mark only these two critical.
RECOGNISED_CRITICAL = frozenset({"2.5.29.19", "2.5.29.15"})
_NONCE_OID = "1.2.840.113635.100.8.2"


def check_extensions(certs: Sequence[x509.Certificate], *, first_index: int = 0) -> None:
    """Unknown critical extensions, and a nonce extension above the credential certificate.

    Codes: ``extension_critical_unknown``, ``extension_below_leaf`` (the same names as
    the Android verifier), ``attestation_malformed`` for unparsable extension lists.
    """
    for index, cert in enumerate(certs, start=first_index):
        try:
            extensions = list(cert.extensions)
        except (ValueError, x509.DuplicateExtension) as exc:
            raise VerificationError(
                "attestation_malformed", "a certificate's extensions are malformed", index=index
            ) from exc
        for ext in extensions:
            oid = ext.oid.dotted_string
            if ext.critical and oid not in RECOGNISED_CRITICAL:
                raise VerificationError(
                    "extension_critical_unknown",
                    "a certificate carries a critical extension this verifier does not know",
                    index=index,
                    oid=oid,
                )
            if index > 0 and oid == _NONCE_OID:
                raise VerificationError(
                    "extension_below_leaf",
                    "a certificate above the credential certificate carries a nonce",
                    index=index,
                )


def verify_chain(
    certs: Sequence[x509.Certificate],
    *,
    anchors: Sequence[TrustAnchor],
    now: datetime,
    verified_cache: VerifiedLinkCache | None = None,
    ders: Sequence[bytes] | None = None,
) -> TrustAnchor:
    """Check that ``certs`` (leaf first) chains to one of ``anchors`` and is valid at ``now``.

    ``ders``: the certificates' DER as received (else re-encoded from ``certs`` where
    needed). Returns the anchor used. Error codes: ``certificate_expired``,
    ``certificate_not_yet_valid``, ``chain_untrusted``, ``chain_signature_invalid``,
    ``extension_critical_unknown``, ``extension_below_leaf``, ``attestation_malformed``.
    The leaf link is always verified; links above it may be served from ``verified_cache``.
    """
    if not anchors:
        # fail closed: an empty trust store must never mean "trust everything"
        raise ValueError("no trust anchors configured")
    for index, cert in enumerate(certs):
        _check_validity(cert, now, index=index)
    if ders is None:
        ders = [_der(cert) for cert in certs]
    check_extensions(certs[:1])
    for index, cert in enumerate(certs[1:], start=1):
        if verified_cache is None:
            _check_upper(cert, index=index)
        else:  # these checks read only the certificate's bytes: once per exact DER
            verified_cache.decoded("apple-upper-checked", ders[index], partial(_upper_checked, cert, index))
    for index in range(len(certs) - 1):
        # never cache the leaf link: it is new for every attestation and is what binds the key
        cache = verified_cache if index > 0 else None
        if not _link_verified(certs[index], certs[index + 1], cache, ders[index : index + 2]):
            raise VerificationError(
                "chain_signature_invalid",
                "a certificate is not signed by the next one in x5c",
                index=index,
            )
    return _verify_anchor_link(
        certs, ders[-1], anchors=anchors, now=now, verified_cache=verified_cache
    )


def _check_upper(cert: x509.Certificate, *, index: int) -> None:
    """The checks of a certificate above the leaf that depend on its bytes alone."""
    check_extensions([cert], first_index=index)
    # Only the leaf may be an end-entity: otherwise the attested key could sign a "leaf".
    if not _is_ca(cert):
        raise VerificationError(
            "chain_untrusted", "an intermediate certificate is not a CA", index=index
        )


def _upper_checked(cert: x509.Certificate, index: int, _der: bytes) -> bool:
    _check_upper(cert, index=index)
    return True


def _verify_anchor_link(
    certs: Sequence[x509.Certificate],
    top_der: bytes,
    *,
    anchors: Sequence[TrustAnchor],
    now: datetime,
    verified_cache: VerifiedLinkCache | None,
) -> TrustAnchor:
    top = certs[-1]
    # The leaf link is never cached: if x5c is only a leaf, its link to the root is checked.
    cache = verified_cache if len(certs) > 1 else None
    for anchor in anchors:
        if top_der == anchor.der:
            # x5c included the root itself; it is trusted by identity, not by signature
            return anchor
        if cache is not None and link_key(top_der, anchor.der) in cache:
            # verified against this anchor before (the name check passed then, on these bytes)
            _check_validity(anchor.certificate, now, index=len(certs))
            return anchor
        if top.issuer != anchor.certificate.subject:
            continue
        if _link_verified(top, anchor.certificate, cache, (top_der, anchor.der)):
            _check_validity(anchor.certificate, now, index=len(certs))
            return anchor
    raise VerificationError(
        "chain_untrusted", "the certificate chain does not end at a trusted root"
    )
