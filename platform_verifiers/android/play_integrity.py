"""Play Integrity: verify a decoded integrity verdict against the request and the app's policy.

Google, "Integrity verdicts":
https://developer.android.com/google/play/integrity/verdicts
and "Make a standard API request" / "Make a classic API request":
https://developer.android.com/google/play/integrity/standard,
https://developer.android.com/google/play/integrity/classic

The payload (``tokenPayloadExternal``) is what Google's ``decodeIntegrityToken`` returns,
or what the publisher's keys decrypt and verify locally (classic requests). This module
only checks it; decoding is I/O or key handling and lives in ``attester/``. Steps:

1. ``requestDetails``: the request binding (``requestHash`` for standard requests, ``nonce``
   for classic ones) equals the value the attester expects, the package name is the app's,
   and ``timestampMillis`` is recent (not in the future beyond the skew).
2. ``appIntegrity``: the package name and signing-certificate digests are the app's; the
   app recognition verdict is ``PLAY_RECOGNIZED`` unless the policy relaxes it.
3. ``deviceIntegrity``: every required device recognition label is present; optionally the
   recent device activity level is at most the policy's.
4. ``accountDetails``: the licensing verdict is ``LICENSED`` unless the policy relaxes it.

Pure: ``now`` and the expected values are arguments.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from ..errors import PolicyViolation, VerificationError

RequestType = Literal["standard", "classic"]
DEVICE_LABELS = frozenset(
    {
        "MEETS_BASIC_INTEGRITY",
        "MEETS_DEVICE_INTEGRITY",
        "MEETS_STRONG_INTEGRITY",
        "MEETS_VIRTUAL_INTEGRITY",
    }
)
ACTIVITY_LEVELS = ("LEVEL_1", "LEVEL_2", "LEVEL_3", "LEVEL_4")
# Every value Google documents for each verdict we read; anything else is refused
# (integrity_verdict_unknown) rather than guessed at, even where the policy relaxes the check.
APP_RECOGNITION_VERDICTS = frozenset({"PLAY_RECOGNIZED", "UNRECOGNIZED_VERSION", "UNEVALUATED"})
LICENSING_VERDICTS = frozenset({"LICENSED", "UNLICENSED", "UNEVALUATED"})
ACTIVITY_VERDICTS = frozenset({*ACTIVITY_LEVELS, "UNEVALUATED"})

#: Every ``VerificationError.code`` raised here (plus ``policy_violation`` with a rule).
PLAY_INTEGRITY_ERROR_CODES: frozenset[str] = frozenset(
    {
        "integrity_payload_malformed",
        "integrity_binding_mismatch",
        "integrity_package_mismatch",
        "integrity_certificate_mismatch",
        "integrity_token_stale",
        "integrity_token_future",
        "integrity_verdict_unknown",
    }
)


@dataclass(frozen=True)
class PlayIntegrityPolicy:
    """What a Play Integrity verdict must show. Defaults are the strict ones."""

    required_device_labels: frozenset[str] = frozenset({"MEETS_DEVICE_INTEGRITY"})
    require_play_recognized: bool = True
    require_licensed: bool = True
    max_token_age: timedelta = timedelta(minutes=5)
    #: ``None``: not checked; else the highest ``deviceActivityLevel`` accepted
    #: (LEVEL_1 = least activity; a high level hints at a farm of requests).
    max_device_activity_level: str | None = None
    #: ``UNEVALUATED`` device activity passes when the level is checked only if this is set
    allow_unevaluated_activity: bool = False


@dataclass(frozen=True)
class PlayIntegrityVerdict:
    """The checked facts of a verdict (what may be passed on into the issued JWT)."""

    request_type: RequestType
    package_name: str
    binding: str | None
    timestamp: datetime
    app_recognition_verdict: str
    device_recognition_verdict: tuple[str, ...]
    app_licensing_verdict: str | None
    device_activity_level: str | None
    raw: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)


def _malformed(why: str) -> VerificationError:
    return VerificationError(
        "integrity_payload_malformed", "the integrity verdict is malformed", reason=why
    )


def _unknown(field_name: str) -> VerificationError:
    # the value itself is not echoed: it is caller-controlled for locally decoded tokens
    return VerificationError(
        "integrity_verdict_unknown",
        "the integrity verdict has a value this attester does not know",
        field=field_name,
    )


def _object(parent: Mapping[str, Any], name: str, *, required: bool = True) -> Mapping[str, Any]:
    value = parent.get(name)
    if value is None and not required:
        return {}
    if not isinstance(value, Mapping):
        raise _malformed(f"{name} missing")
    return value


def _string(parent: Mapping[str, Any], name: str) -> str:
    value = parent.get(name)
    if not isinstance(value, str) or not value:
        raise _malformed(f"{name} missing")
    return value


def _digest(text: str) -> bytes | None:
    # Google sends base64url (no padding) of SHA-256; tolerate padding and the std alphabet
    compact = text.rstrip("=").replace("+", "-").replace("/", "_")
    try:
        raw = base64.urlsafe_b64decode(compact + "=" * (-len(compact) % 4))
    except (ValueError, TypeError):
        return None
    return raw if len(raw) == 32 else None


def verify_integrity_payload(
    payload: Mapping[str, Any],
    *,
    request_type: RequestType,
    expected_binding: str | None,
    package_names: frozenset[str],
    signer_digests: frozenset[bytes] | None,
    policy: PlayIntegrityPolicy,
    now: datetime,
    skew: timedelta = timedelta(seconds=60),
) -> PlayIntegrityVerdict:
    """Check a decoded verdict (``tokenPayloadExternal``); return its facts or raise.

    ``expected_binding`` is the ``requestHash`` (standard) or ``nonce`` (classic) the app
    had to send; see docs/guides/android.md for how the attester derives it. ``None`` for
    it or for ``signer_digests`` means "not checked" (the offline CLI only).
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    if not package_names or signer_digests is not None and not signer_digests:
        raise ValueError("package names (and signer digests, when checked) must not be empty")
    if not isinstance(payload, Mapping):
        raise _malformed("not an object")

    # 1. requestDetails: binding, package, freshness.
    details = _object(payload, "requestDetails")
    member = "requestHash" if request_type == "standard" else "nonce"
    found = details.get(member)
    binding = found if isinstance(found, str) else None
    if expected_binding is not None and (
        binding is None
        or not hmac.compare_digest(binding.encode("utf-8", "replace"), expected_binding.encode())
    ):
        raise VerificationError(
            "integrity_binding_mismatch",
            "the integrity token is not bound to this challenge and instance key",
            member=member,
        )
    if _string(details, "requestPackageName") not in package_names:
        raise VerificationError(
            "integrity_package_mismatch", "the integrity token was requested by another package"
        )
    millis = details.get("timestampMillis")
    # an int64 in JSON as a decimal string (proto3 JSON) or a number; nothing else
    if isinstance(millis, bool) or not (
        isinstance(millis, int)
        or (isinstance(millis, str) and millis.isascii() and millis.isdigit())
    ):
        raise _malformed("timestampMillis missing")
    try:
        timestamp = datetime.fromtimestamp(int(millis) / 1000, UTC)
    except (ValueError, OverflowError, OSError):
        raise _malformed("timestampMillis out of range") from None
    if timestamp > now + skew:
        raise VerificationError("integrity_token_future", "the integrity token is from the future")
    if now - timestamp > policy.max_token_age:
        raise VerificationError(
            "integrity_token_stale",
            "the integrity token is too old",
            max_age=int(policy.max_token_age.total_seconds()),
        )

    # 2. appIntegrity: recognition, package, signing certificate.
    app = _object(payload, "appIntegrity")
    recognition = _string(app, "appRecognitionVerdict")
    if recognition not in APP_RECOGNITION_VERDICTS:
        raise _unknown("appRecognitionVerdict")
    if policy.require_play_recognized and recognition != "PLAY_RECOGNIZED":
        raise PolicyViolation(
            "pi_app_recognition", seen=recognition[:32], required="PLAY_RECOGNIZED"
        )
    if recognition != "UNEVALUATED":  # Google omits the app details when it did not evaluate
        if _string(app, "packageName") not in package_names:
            raise VerificationError(
                "integrity_package_mismatch", "the verdict is for another package"
            )
        digests = app.get("certificateSha256Digest")
        if not isinstance(digests, list) or not digests:
            raise _malformed("certificateSha256Digest missing")
        decoded = {_digest(d) if isinstance(d, str) else None for d in digests}
        if None in decoded or (signer_digests is not None and not decoded & signer_digests):
            raise VerificationError(
                "integrity_certificate_mismatch",
                "the app is not signed with an allowed certificate",
            )

    # 3. deviceIntegrity: labels and, optionally, recent device activity.
    device = _object(payload, "deviceIntegrity")
    labels = device.get("deviceRecognitionVerdict", [])
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise _malformed("deviceRecognitionVerdict is not a list")
    if not set(labels) <= DEVICE_LABELS:
        raise _unknown("deviceRecognitionVerdict")
    missing = sorted(policy.required_device_labels - set(labels))
    if missing:
        raise PolicyViolation(
            "pi_device_recognition",
            seen=sorted(labels),
            required=sorted(policy.required_device_labels),
        )
    activity = _object(device, "recentDeviceActivity", required=False).get("deviceActivityLevel")
    if activity is not None and (
        not isinstance(activity, str) or activity not in ACTIVITY_VERDICTS
    ):
        raise _unknown("deviceActivityLevel")
    level = activity if isinstance(activity, str) else None
    if policy.max_device_activity_level is not None:
        allowed = ACTIVITY_LEVELS[: ACTIVITY_LEVELS.index(policy.max_device_activity_level) + 1]
        unevaluated_ok = policy.allow_unevaluated_activity and level in (None, "UNEVALUATED")
        if level not in allowed and not unevaluated_ok:
            raise PolicyViolation(
                "pi_device_activity",
                seen=(level or "absent")[:16],
                required=policy.max_device_activity_level,
            )

    # 4. accountDetails: licensing.
    licensing = _object(payload, "accountDetails", required=False).get("appLicensingVerdict")
    if licensing is not None and (
        not isinstance(licensing, str) or licensing not in LICENSING_VERDICTS
    ):
        raise _unknown("appLicensingVerdict")
    licensing_text = licensing if isinstance(licensing, str) else None
    if policy.require_licensed and licensing_text != "LICENSED":
        raise PolicyViolation(
            "pi_licensing", seen=(licensing_text or "absent")[:32], required="LICENSED"
        )

    return PlayIntegrityVerdict(
        request_type=request_type,
        package_name=str(details["requestPackageName"]),
        binding=binding,
        timestamp=timestamp,
        app_recognition_verdict=recognition,
        device_recognition_verdict=tuple(labels),
        app_licensing_verdict=licensing_text,
        device_activity_level=level,
        raw=payload,
    )


def integrity_binding(challenge: str, key_thumbprint: str) -> str:
    """The ``requestHash`` / ``nonce`` an app must send: binds challenge and instance key.

    ``base64url(SHA-256(ASCII(challenge) || "." || ASCII(RFC 7638 thumbprint)))`` without
    padding: 43 characters, valid for both ``requestHash`` (at most 500 characters) and the
    classic ``nonce`` (URL-safe base64, 16 to 500 characters).
    """
    digest = hashlib.sha256(f"{challenge}.{key_thumbprint}".encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
