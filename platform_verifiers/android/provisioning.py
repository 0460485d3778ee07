"""Classify an attestation chain as factory-provisioned, RKP or unknown.

Google's reference verifier decides this in ``KeyAttestationCertPath.provisioningMethod``
(https://github.com/android/keyattestation): a chain is **factory** provisioned when the
certificate directly under the root has a ``serialNumber`` (2.5.4.5) attribute in its
subject (the per-device OEM intermediates, e.g. ``serialNumber=87f4514475ba0a2b``), and
**remotely provisioned** (RKP) when that certificate is ``CN=Droid CA2, O=Google LLC``;
anything else is **unknown**.

We add two RKP signals that only Google can put in a chain: a certificate carrying the
RKP ProvisioningInfo extension (1.3.6.1.4.1.11129.2.1.30), and an anchor that only RKP
chains use (the 2025 EC P-384 "Key Attestation CA1"; its chains, as seen in
../shared/vectors, also have ``Droid CA2`` under the root). RKP signals are checked first,
so a chain showing both an RKP signal and a serialNumber intermediate is dated like RKP:
where the rules disagree we pick the stricter class.

Only factory chains skip the expiry check of their intermediates (their certificates
outlive their dates in the field and Google ignores them); RKP and unknown chains must
have every certificate between leaf and anchor valid at ``now``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from cryptography import x509
from cryptography.x509.oid import NameOID

from platform_verifiers.anchors import TrustAnchor
from platform_verifiers.android.certs import ChainCertificate

# Anchors used only by remotely provisioned chains.
RKP_ONLY_ANCHORS = frozenset({"google_hw_ec_p384_2025"})
# The RKP intermediate directly under Google's roots, as Google's verifier spells it
# (RFC 2253 form: the last RDN first).
DROID_CA2 = "CN=Droid CA2,O=Google LLC"


class Provisioning(Enum):
    FACTORY = "factory"
    RKP = "rkp"
    UNKNOWN = "unknown"


class ProvisioningRule(Enum):
    """The rule that decided a chain's class (reported by the CLI and stored per instance)."""

    RKP_ONLY_ANCHOR = "rkp_only_anchor"
    DROID_CA2_UNDER_ROOT = "droid_ca2_under_root"
    PROVISIONING_INFO = "provisioning_info_extension"
    SERIAL_NUMBER_UNDER_ROOT = "serial_number_under_root"
    NO_RULE_MATCHED = "no_rule_matched"


@dataclass(frozen=True)
class Classification:
    provisioning: Provisioning
    rule: ProvisioningRule


def index_under_root(certs: Sequence[ChainCertificate], anchor_spki: bytes) -> int:
    """Index of the certificate the root signed: below the root if the chain carries it."""
    if len(certs) > 1 and certs[-1].spki_der == anchor_spki:
        return len(certs) - 2
    return len(certs) - 1


def _has_serial_number(name: x509.Name) -> bool:
    return bool(name.get_attributes_for_oid(NameOID.SERIAL_NUMBER))


def classify(
    certs: Sequence[ChainCertificate], anchor: TrustAnchor, anchor_spki: bytes
) -> Classification:
    """The chain's provisioning class and the rule that decided it (see module doc)."""
    rkp = Provisioning.RKP
    if anchor.name in RKP_ONLY_ANCHORS:
        return Classification(rkp, ProvisioningRule.RKP_ONLY_ANCHOR)
    under_root = index_under_root(certs, anchor_spki)
    # The leaf's subject is chosen by the app (setCertificateSubject): never evidence.
    # Only the certificate under the root is read, and those are plain DER in every chain
    # we know; one pyca can't read is simply neither factory nor Droid CA2 (fail closed).
    cert = certs[under_root] if under_root > 0 else None
    subject = cert.subject_name if cert is not None else None
    if cert is not None and cert.subject_rfc4514 == DROID_CA2:
        return Classification(rkp, ProvisioningRule.DROID_CA2_UNDER_ROOT)
    if any(c.has_provisioning_info for c in certs):
        return Classification(rkp, ProvisioningRule.PROVISIONING_INFO)
    if subject is not None and _has_serial_number(subject):
        return Classification(Provisioning.FACTORY, ProvisioningRule.SERIAL_NUMBER_UNDER_ROOT)
    return Classification(Provisioning.UNKNOWN, ProvisioningRule.NO_RULE_MATCHED)
