"""Apple App Attest: verify attestations (key registration) and assertions (later requests).

Pure functions of (evidence, expected values, trust anchors, now); see ``verify.py`` and
Apple, "Validating apps that connect to your server":
https://developer.apple.com/documentation/devicecheck/validating-apps-that-connect-to-your-server
"""

from ..linkcache import VerifiedLinkCache
from .anchors import APP_ATTEST_ROOT_NAME, apple_app_attest_roots, apple_receipt_roots
from .parse import (
    MAX_ASSERTION_BYTES,
    MAX_ATTESTATION_BYTES,
    Assertion,
    AttestationObject,
    AuthenticatorData,
    CoseKey,
    parse_assertion,
    parse_attestation_object,
)
from .receipt import RECEIPT_ERROR_CODES, Receipt, parse_receipt_payload, verify_receipt
from .verify import (
    AAGUIDS,
    AppAssertion,
    AppAttestation,
    Environment,
    load_public_key,
    verify_assertion,
    verify_attestation,
)

#: Every ``VerificationError.code`` this package raises (for the HTTP status table).
ATTESTATION_ERROR_CODES: frozenset[str] = frozenset(
    {
        "attestation_too_large",
        "attestation_malformed",
        "attestation_format_unsupported",
        "certificate_expired",
        "certificate_not_yet_valid",
        "chain_untrusted",
        "chain_signature_invalid",
        "nonce_extension_missing",
        "nonce_extension_malformed",
        "nonce_mismatch",
        "key_id_mismatch",
        "app_id_mismatch",
        "counter_not_zero",
        "environment_mismatch",
        "credential_id_mismatch",
        "extension_critical_unknown",
        "extension_below_leaf",
    }
)
ASSERTION_ERROR_CODES: frozenset[str] = frozenset(
    {
        "assertion_malformed",
        "assertion_signature_invalid",
        "app_id_mismatch",
        "counter_not_increasing",
    }
)

__all__ = [
    "AAGUIDS",
    "APP_ATTEST_ROOT_NAME",
    "ASSERTION_ERROR_CODES",
    "ATTESTATION_ERROR_CODES",
    "MAX_ASSERTION_BYTES",
    "MAX_ATTESTATION_BYTES",
    "RECEIPT_ERROR_CODES",
    "AppAssertion",
    "AppAttestation",
    "Assertion",
    "AttestationObject",
    "AuthenticatorData",
    "CoseKey",
    "Environment",
    "Receipt",
    "VerifiedLinkCache",
    "apple_app_attest_roots",
    "apple_receipt_roots",
    "load_public_key",
    "parse_assertion",
    "parse_attestation_object",
    "parse_receipt_payload",
    "verify_assertion",
    "verify_attestation",
    "verify_receipt",
]
