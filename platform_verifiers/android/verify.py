"""Verify an Android Key Attestation certificate chain.

Spec: https://developer.android.com/privacy-and-security/security-key-attestation
(and ../shared/docs/SPEC.md, "Android Key Attestation"). Pure: the chain, challenge,
policy, trust anchors, revocation snapshot and ``now`` are all arguments.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from platform_verifiers.anchors import TrustAnchor
from platform_verifiers.android.certs import ChainCertificate
from platform_verifiers.android.chain import verify_chain
from platform_verifiers.android.fastkd import decode_key_description
from platform_verifiers.android.parse import KeyDescription, SecurityLevel
from platform_verifiers.android.policy import AndroidPolicy, check_policy, effective_security_level
from platform_verifiers.android.provisioning import Provisioning, ProvisioningRule
from platform_verifiers.android.revocation import RevocationSnapshot, check_revocation
from platform_verifiers.errors import VerificationError
from platform_verifiers.linkcache import VerifiedLinkCache


@dataclass(frozen=True)
class AndroidAttestation:
    """A verified attestation: what the service needs to register the instance."""

    key_description: KeyDescription
    leaf_spki_der: bytes
    chain_serials: tuple[str, ...]  # lowercase hex, leaf first
    root_anchor: str
    provisioning: Provisioning
    security_level: SecurityLevel  # effective: the lower of attestation and KeyMint
    # the rule that classified the chain (provisioning.py); defaulted for other constructors
    provisioning_rule: ProvisioningRule = ProvisioningRule.NO_RULE_MATCHED

    def leaf_public_key(self) -> PublicKeyTypes:
        """The attested key (the instance key that goes into ``cnf.jwk``)."""
        return serialization.load_der_public_key(self.leaf_spki_der)


def _leaf_key_or_none(leaf: ChainCertificate) -> PublicKeyTypes | None:
    # A key type this cryptography build cannot load is simply "not EC P-256" for policy.
    try:
        return leaf.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None


def verify_android_attestation(
    *,
    chain: Sequence[bytes],
    challenge: bytes | None,
    policy: AndroidPolicy,
    anchors: Sequence[TrustAnchor],
    revocation: RevocationSnapshot | None,
    now: datetime,
    max_revocation_age: timedelta | None = None,
    verified_cache: VerifiedLinkCache | None = None,
) -> AndroidAttestation:
    """Verify ``chain`` (DER certificates, leaf first) and apply ``policy``.

    ``challenge`` None skips the challenge check; ``revocation`` None means the caller
    chose not to check revocation. Raises ``VerificationError`` (stable ``code``) or
    ``PolicyViolation`` (code ``policy_violation`` with its ``rule``); ``ValueError``
    for caller mistakes (naive ``now``, no anchors).
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")

    # 1. Chain: decode, structure, signatures, anchor, extensions, class, issuers, dates.
    verified = verify_chain(chain, anchors, now, verified_cache)
    leaf = verified.certificates[0]
    serials = tuple(c.serial_hex for c in verified.certificates)

    # 2. Revocation: Google's status list, REVOKED and SUSPENDED alike.
    if revocation is not None:
        check_revocation(serials, revocation, now=now, max_age=max_revocation_age)

    # 3. The leaf's KeyDescription, decoded (never sliced): a strict DER fast path, and
    #    pyasn1 (the schema of record) for anything that path does not recognise.
    if not leaf.key_descriptions:
        raise VerificationError("key_description_missing", "the leaf has no attestation extension")
    if len(leaf.key_descriptions) > 1:
        raise VerificationError(
            "key_description_malformed", "the leaf has several attestation extensions"
        )
    kd = decode_key_description(leaf.key_descriptions[0])

    # 4. The challenge the service issued, compared in constant time.
    if challenge is not None and not hmac.compare_digest(kd.attestation_challenge, challenge):
        raise VerificationError("challenge_mismatch", "the attestation challenge does not match")

    # 5. The app's policy.
    check_policy(kd, _leaf_key_or_none(leaf), policy)

    return AndroidAttestation(
        key_description=kd,
        leaf_spki_der=leaf.spki_der,
        chain_serials=serials,
        root_anchor=verified.anchor.name,
        provisioning=verified.provisioning,
        security_level=effective_security_level(kd),
        provisioning_rule=verified.provisioning_rule,
    )
