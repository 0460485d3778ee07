"""Android Key Attestation: pure verification of Keystore attestation chains.

Spec: https://developer.android.com/privacy-and-security/security-key-attestation
Entry point: ``verify_android_attestation``.
"""

from platform_verifiers.android.anchors import aosp_software_roots, google_hardware_roots
from platform_verifiers.android.chain import MAX_CHAIN_LENGTH
from platform_verifiers.android.parse import (
    AttestationApplicationId,
    AuthorizationList,
    KeyDescription,
    PackageInfo,
    RootOfTrust,
    SecurityLevel,
    VerifiedBootState,
    parse_key_description,
)
from platform_verifiers.android.policy import AndroidPolicy
from platform_verifiers.android.provisioning import Provisioning, ProvisioningRule
from platform_verifiers.android.revocation import RevocationSnapshot, parse_status_list
from platform_verifiers.android.verify import AndroidAttestation, verify_android_attestation
from platform_verifiers.linkcache import VerifiedLinkCache

__all__ = [
    "MAX_CHAIN_LENGTH",
    "AndroidAttestation",
    "AndroidPolicy",
    "AttestationApplicationId",
    "AuthorizationList",
    "KeyDescription",
    "PackageInfo",
    "Provisioning",
    "ProvisioningRule",
    "RevocationSnapshot",
    "RootOfTrust",
    "SecurityLevel",
    "VerifiedBootState",
    "VerifiedLinkCache",
    "aosp_software_roots",
    "google_hardware_roots",
    "parse_key_description",
    "parse_status_list",
    "verify_android_attestation",
]
