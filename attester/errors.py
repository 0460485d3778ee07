"""RFC 9457 problem details: one exception, one table from stable codes to HTTP statuses."""

from __future__ import annotations

from typing import Any

from platform_verifiers.errors import VerificationError

PROBLEM_TYPE_BASE = "urn:client-attester:error:"
PROBLEM_JSON = "application/problem+json"

# Every code the service can answer with, and its status. Unknown verification codes
# fall back to 400: the evidence was rejected.
STATUS: dict[str, int] = {
    # request shape
    "malformed_request": 400,
    "invalid_request": 422,
    "request_too_large": 413,
    # the HTTP layer (attester/http_protocol.py): before any route
    "request_headers_too_large": 431,
    "request_timeout": 408,
    "http_request_malformed": 400,
    "unsupported_media_type": 415,
    "not_found": 404,
    "method_not_allowed": 405,
    # challenges
    "challenge_invalid": 400,
    "challenge_expired": 400,
    "challenge_replayed": 409,
    # key proof and instance keys
    "key_proof_malformed": 400,
    "key_proof_alg_not_allowed": 400,
    "key_proof_signature_invalid": 401,
    "key_proof_wrong_audience": 401,
    "key_proof_challenge_mismatch": 401,
    "key_proof_stale": 401,
    "key_proof_future": 401,
    "jwk_private_members": 400,
    "jwk_key_type_not_allowed": 400,
    "jwk_malformed": 400,
    # registry and instances
    "app_not_registered": 403,
    "instance_not_found": 404,
    "instance_already_registered": 409,
    "instance_revoked": 403,
    "instance_suspended": 403,
    "instance_status_conflict": 409,
    "status_list_full": 503,
    # admin API
    "admin_unauthorized": 401,
    "registry_invalid": 422,
    "registry_unpublished": 503,
    "registration_too_old": 403,
    # platform verdicts
    "policy_violation": 403,
    "chain_untrusted": 403,
    "certificate_revoked": 403,
    "revocation_list_stale": 503,
    "revocation_list_unavailable": 503,
    "counter_not_increasing": 409,
    "platform_not_supported": 400,
    # Android chain checks that fail closed (issue 8): unreadable or contradictory
    # certificates are malformed evidence (400); a non-CA issuer proves the wrong thing
    "extension_duplicate": 400,
    "extension_critical_unknown": 400,
    "extension_malformed": 400,
    "intermediate_not_ca": 403,
    "extension_below_leaf": 403,
    # Android chain and KeyDescription faults (answered 400 by the fallback before they
    # were listed here; listed so the API documentation names them)
    "certificate_malformed": 400,
    "chain_empty": 400,
    "chain_too_long": 400,
    "challenge_mismatch": 400,
    "path_length_exceeded": 400,
    "key_description_missing": 400,
    "key_description_malformed": 400,
    "chain_certificate_repeated": 400,
    "chain_continues_past_root": 400,
    # Apple App Attest: malformed evidence 400, evidence that proves the wrong thing 403
    "client_data_malformed": 400,
    "client_data_challenge_mismatch": 400,
    "client_data_key_mismatch": 400,
    "app_ambiguous": 400,
    "attestation_too_large": 400,
    "attestation_malformed": 400,
    "attestation_format_unsupported": 400,
    "nonce_extension_missing": 400,
    "nonce_extension_malformed": 400,
    "assertion_malformed": 400,
    "certificate_expired": 403,
    "certificate_not_yet_valid": 403,
    "chain_signature_invalid": 403,
    "nonce_mismatch": 403,
    "key_id_mismatch": 403,
    "credential_id_mismatch": 403,
    "app_id_mismatch": 403,
    "counter_not_zero": 403,
    "environment_mismatch": 403,
    "assertion_signature_invalid": 403,
    # Play Integrity (issue 10): bad token 400, genuine but refusing verdict 403, Google down 503
    "integrity_not_configured": 400,
    "integrity_token_required": 403,
    "integrity_token_malformed": 400,
    "integrity_token_invalid": 403,
    "integrity_payload_malformed": 400,
    "integrity_binding_mismatch": 403,
    "integrity_package_mismatch": 403,
    "integrity_certificate_mismatch": 403,
    "integrity_token_stale": 403,
    "integrity_token_future": 403,
    "integrity_verdict_unknown": 403,
    "integrity_decode_unavailable": 503,
    # App Attest receipts and Apple's fraud metric (issue 10)
    "receipt_malformed": 400,
    "receipt_signature_invalid": 403,
    "receipt_signer_not_authorized": 403,
    "receipt_app_id_mismatch": 403,
    "receipt_key_mismatch": 403,
    "receipt_type_unexpected": 403,
    "receipt_not_yet_valid": 403,
    "receipt_expired": 403,
    "receipt_stale": 403,
    "receipt_exchange_rejected": 403,
    "receipt_exchange_unavailable": 503,
    # operation
    "rate_limited": 429,
    # our own faults
    "internal_error": 500,
    "signing_key_unavailable": 503,
    "storage_unavailable": 503,
    "not_ready": 503,
}


class ProblemError(Exception):
    """A rejection answered as application/problem+json with a stable ``code``.

    ``title`` is short and fixed per situation; it never contains the caller's bytes.
    ``extra`` members are structured and safe (rule names, required values).
    ``headers`` are sent with the response (e.g. ``Retry-After``).
    """

    def __init__(
        self,
        code: str,
        title: str,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(title)
        self.code = code
        self.title = title
        self.status = status or STATUS.get(code, 400)
        self.headers = headers
        self.extra = extra

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE_BASE + self.code,
            "title": self.title,
            "status": self.status,
            "code": self.code,
        }
        body.update({k: v for k, v in self.extra.items() if k not in body})
        if request_id:
            body["request_id"] = request_id
        return body


# Verifier details that stay in the server log: caller-chosen strings (fmt) and the
# publisher's registry (App IDs, allowed packages and signing-certificate digests).
HIDDEN_DETAIL = ("fmt", "app_ids")
PRIVATE_RULES = frozenset({"package_name", "signer_digest"})


def from_verification(error: VerificationError) -> ProblemError:
    """Map a verifier's failure to a problem; detail members are the verifier's safe facts."""
    reserved = {"type", "title", "status", "code", "detail", "instance", "request_id"}
    hidden = set(HIDDEN_DETAIL)
    if error.detail.get("rule") in PRIVATE_RULES:
        hidden |= {"seen", "required"}
    extra = {
        (f"evidence_{k}" if k in reserved else k): _jsonable(v)
        for k, v in error.detail.items()
        if k not in hidden
    }
    return ProblemError(error.code, error.message, **extra)


def loggable(error: VerificationError) -> dict[str, Any]:
    """Every detail of a verifier's failure, for the server log (never for the caller)."""
    return {k: _jsonable(v) for k, v in error.detail.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (frozenset, set, tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)
