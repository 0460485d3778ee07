"""OpenAPI documentation of the problem codes each endpoint can answer with.

``problem_responses("challenge_invalid", "rate_limited")`` builds the ``responses=`` of a
FastAPI route from the one table in :mod:`attester.errors` (code -> status), so the
documentation cannot disagree with what the service sends. Every response object lists its
codes in ``x-problem-codes`` and as an ``enum`` of the ``code`` member.
RFC 9457: https://www.rfc-editor.org/rfc/rfc9457
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from attester.errors import PROBLEM_JSON, PROBLEM_TYPE_BASE, STATUS
from platform_verifiers.android.play_integrity import PLAY_INTEGRITY_ERROR_CODES
from platform_verifiers.apple.receipt import RECEIPT_ERROR_CODES

# Answered by the request middleware and the validation handlers on any endpoint with a body.
REQUEST_PROBLEMS = (
    "malformed_request",
    "invalid_request",
    "request_too_large",
    "unsupported_media_type",
    "internal_error",
    "storage_unavailable",
)
CHALLENGE_PROBLEMS = ("challenge_invalid", "challenge_expired", "challenge_replayed")
KEY_PROOF_PROBLEMS = (
    "key_proof_malformed",
    "key_proof_alg_not_allowed",
    "key_proof_signature_invalid",
    "key_proof_wrong_audience",
    "key_proof_challenge_mismatch",
    "key_proof_stale",
    "key_proof_future",
)
JWK_PROBLEMS = ("jwk_private_members", "jwk_key_type_not_allowed", "jwk_malformed")
# a Play Integrity token (registration, and renewal when sent or required): the verdict
# checks' own codes, plus the decoding and combination steps of the service
INTEGRITY_PROBLEMS = (
    "integrity_not_configured",
    "integrity_token_required",
    "integrity_token_malformed",
    "integrity_token_invalid",
    *sorted(PLAY_INTEGRITY_ERROR_CODES),
    "integrity_decode_unavailable",
)
# the App Attest receipt exchanged with Apple for the fraud metric (registration and renewal):
# the receipt checks' own codes, plus the exchange's
RECEIPT_PROBLEMS = (
    *sorted(RECEIPT_ERROR_CODES),
    "receipt_exchange_rejected",
    "receipt_exchange_unavailable",
)
# issuance: the signing key, the status-list index, and an instance suspended or revoked meanwhile
ISSUANCE_PROBLEMS = ("signing_key_unavailable", "status_list_full", "instance_suspended")


def _schema(codes: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["type", "title", "status", "code"],
        "properties": {
            "type": {"type": "string", "format": "uri", "example": PROBLEM_TYPE_BASE + codes[0]},
            "title": {"type": "string", "description": "short, fixed per situation"},
            "status": {"type": "integer"},
            "code": {"type": "string", "enum": codes, "description": "stable machine code"},
            "request_id": {"type": "string", "description": "find the server log lines"},
        },
        "additionalProperties": True,
    }


def problem_responses(*codes: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: the given codes grouped by their status from STATUS.

    Raises ValueError for a code missing from the table (a typo must not document a
    code the service never sends).
    """
    by_status: dict[int, list[str]] = {}
    for code in dict.fromkeys(codes):
        if code not in STATUS:
            raise ValueError(f"unknown problem code {code!r}: add it to attester.errors.STATUS")
        by_status.setdefault(STATUS[code], []).append(code)
    responses: dict[int | str, dict[str, Any]] = {}
    for status in sorted(by_status):
        listed = by_status[status]
        responses[status] = {
            "description": f"{HTTPStatus(status).phrase}: " + ", ".join(f"`{c}`" for c in listed),
            "x-problem-codes": listed,
            "content": {
                PROBLEM_JSON: {
                    "schema": _schema(listed),
                    "examples": {
                        c: {
                            "value": {
                                "type": PROBLEM_TYPE_BASE + c,
                                "title": c.replace("_", " "),
                                "status": status,
                                "code": c,
                            }
                        }
                        for c in listed
                    },
                }
            },
        }
    return responses


__all__ = [
    "CHALLENGE_PROBLEMS",
    "ISSUANCE_PROBLEMS",
    "JWK_PROBLEMS",
    "KEY_PROOF_PROBLEMS",
    "REQUEST_PROBLEMS",
    "problem_responses",
]
