"""Google's attestation status list: pure parsing and checking.

Spec: https://developer.android.com/privacy-and-security/security-key-attestation#certificate_status
The list (https://android.googleapis.com/attestation/status) maps certificate serial
numbers, in lowercase hex, to a status, REVOKED or SUSPENDED; both reject. Fetching and
caching are I/O and live in ``attester.android_revocation``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType

from platform_verifiers.errors import VerificationError


@dataclass(frozen=True)
class RevocationSnapshot:
    """The status list as fetched at ``fetched_at``: serial (lowercase hex) -> status."""

    entries: Mapping[str, str]
    fetched_at: datetime


def _bad_list(why: str) -> VerificationError:
    return VerificationError(
        "revocation_list_malformed", "the attestation status list cannot be read", why=why
    )


#: the statuses Google documents; any other status rejects too, but is reported as this
UNRECOGNISED_STATUS = "UNRECOGNISED"
_STATUSES = frozenset({"REVOKED", "SUSPENDED"})


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    document = dict(pairs)
    if len(document) != len(pairs):
        # as for CBOR (platform_verifiers/cbor.py): one list must not say two things
        raise _bad_list("an object has a key twice")
    return document


def parse_status_list(data: bytes, fetched_at: datetime) -> RevocationSnapshot:
    """Parse the JSON status list (``{"entries": {serial: {"status": ...}}}``).

    The list must be UTF-8 JSON (RFC 8259 8.1; json.loads alone also reads UTF-16 and
    UTF-32) with no key twice in an object. Anything else is ``revocation_list_malformed``.
    """
    if fetched_at.tzinfo is None:
        raise ValueError("fetched_at must be timezone-aware")
    try:
        document = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad_list("not UTF-8 JSON") from exc
    except RecursionError as exc:
        raise _bad_list("nested too deeply") from exc
    if not isinstance(document, dict) or not isinstance(document.get("entries"), dict):
        raise _bad_list("no entries object")
    entries: dict[str, str] = {}
    for serial, entry in document["entries"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("status"), str):
            raise _bad_list("entry without a status")
        entries[normalise_serial(serial)] = entry["status"]
    return RevocationSnapshot(entries=MappingProxyType(entries), fetched_at=fetched_at)


def normalise_serial(key: str) -> str:
    """A list key in the form ``ChainCertificate.serial_hex`` uses: lowercase, no leading zeros.

    Keys are documented as lowercase hex, but "00ABC" and "abc" name the same
    certificate; matching them exactly would let a revoked serial slip by when the list
    is written differently (fail open). A key that is not hex makes the list unreadable.
    """
    text = key.strip().lower()
    if not text or any(c not in "0123456789abcdef" for c in text):
        raise _bad_list("an entry key is not a hexadecimal serial number")
    return format(int(text, 16), "x")


#: a list fetched further ahead of ``now`` than this was fetched under a wrong clock
FUTURE_TOLERANCE = timedelta(minutes=5)


def is_stale(snapshot: RevocationSnapshot, now: datetime, max_age: timedelta) -> bool:
    """Older than ``max_age`` at ``now``, or fetched more than :data:`FUTURE_TOLERANCE` after
    it: then its age is unknown (the clock was wrong when it was fetched, or is now), and
    trusted as fresh it would hide every revocation published since."""
    age = now - snapshot.fetched_at
    return age > max_age or -age > FUTURE_TOLERANCE


def check_revocation(
    serials: Sequence[str],
    snapshot: RevocationSnapshot,
    *,
    now: datetime,
    max_age: timedelta | None = None,
) -> None:
    """Reject a stale snapshot, then any listed serial (whatever its status: fail closed).

    ``serials`` are the chain's serial numbers in lowercase hex, leaf first. Stale is
    :func:`is_stale`: a snapshot from the future is stale too.
    """
    if max_age is not None and is_stale(snapshot, now, max_age):
        raise VerificationError(
            "revocation_list_stale",
            "the attestation status list is older than allowed",
            age_seconds=int((now - snapshot.fetched_at).total_seconds()),
            max_age_seconds=int(max_age.total_seconds()),
        )
    for index, serial in enumerate(serials):
        status = snapshot.entries.get(serial)
        if status is not None:
            raise VerificationError(
                "certificate_revoked",
                "a certificate in the chain is revoked or suspended",
                index=index,
                serial=serial,
                # the list's own text only when it is one Google documents
                status=status if status in _STATUSES else UNRECOGNISED_STATUS,
            )
