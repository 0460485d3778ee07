"""Decode CBOR evidence strictly (App Attest objects, the RKP ProvisioningInfo extension).

cbor2 decodes any well-formed item. Two forms it resolves silently are refused here,
because they let one object be read two ways: a map with a key twice (cbor2 keeps the
last; a reader that keeps the first, or a person auditing the bytes, sees another value:
RFC 8949 5.6 leaves the choice to the decoder) and indefinite lengths (chunks cbor2 joins;
WebAuthn's objects and Android's are definite-length CTAP2 canonical CBOR, and every real
sample is). Key order and non-minimal lengths are tolerated: they change no value.
"""

from __future__ import annotations

import io
from typing import Any

import cbor2

from platform_verifiers.errors import VerificationError


def decode_single_cbor_item(data: bytes, *, code: str, what: str, **detail: Any) -> Any:
    """Decode exactly one CBOR item; trailing bytes mean the input is not what it claims.

    Every failure is a ``VerificationError`` with ``code`` (and ``detail``).
    """
    item, used = decode_first_cbor_item(data, code=code, what=what, **detail)
    if used != len(data):
        raise VerificationError(code, f"{what} has bytes after the CBOR item", **detail)
    return item


def decode_first_cbor_item(data: bytes, *, code: str, what: str, **detail: Any) -> tuple[Any, int]:
    """The CBOR item at the start of ``data`` and the number of bytes it takes.

    Refused (a ``VerificationError`` with ``code``): what cbor2 cannot decode, an
    indefinite length, a map with a key twice, a map key that is not an integer or a
    string (no evidence this reads has other keys).
    """
    stream = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(stream).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise VerificationError(code, f"{what} is not valid CBOR", **detail) from exc
    used = stream.tell()
    try:
        end = _strict_end(data)
    except _Refused as refused:
        raise VerificationError(code, f"{what} {refused}", **detail) from None
    if end != used:  # (cbor2 read the item, so the walk should end where it did)
        raise VerificationError(code, f"{what} is not valid CBOR", **detail)
    return item, used


class _Refused(Exception):
    pass


def _strict_end(data: bytes) -> int:
    """Where the item at the start of ``data`` ends, walked without recursion (and with the
    head read inline: ~3 us for an App Attest object, against ~2 us for cbor2's decode).

    The innermost open array or map is ``left`` (the items it still holds) and ``seen``
    (for a map, the keys so far; ``None`` for an array; a map's next item is a key when an
    even number is left); the ones around it wait in ``outer``. A key is compared by its
    major type and value (a string by its bytes), not by its encoding, so a key written
    twice with two different length encodings is still seen twice.
    """
    at, size = 0, len(data)
    outer: list[tuple[int, set[tuple[int, int | bytes]] | None]] = []
    left, seen = 0, None  # (0: no container is open yet)
    while True:
        if at >= size:
            raise _Refused("is truncated")
        initial = data[at]
        major, argument = initial >> 5, initial & 0x1F
        at += 1
        if argument >= 24:
            if argument == 31:  # an indefinite length, or the break that ends one
                raise _Refused("has an indefinite length")
            if argument >= 28:  # reserved
                raise _Refused("is not valid CBOR")
            width = 1 << (argument - 24)
            argument = int.from_bytes(data[at : at + width], "big")
            at += width
        if seen is not None and not left & 1:
            if major > 3:
                raise _Refused("has a map key that is not an integer or a string")
            key = (major, data[at : at + argument] if major > 1 else argument)
            if key in seen:
                raise _Refused("has a map with a key twice")
            seen.add(key)
        if major == 2 or major == 3:
            at += argument
        elif major == 6:
            continue  # a tag: the item it tags follows, and stands in its place
        elif (major == 4 or major == 5) and argument:
            if left:
                outer.append((left, seen))
            left, seen = (argument, None) if major == 4 else (2 * argument, set())
            continue
        if at > size:
            raise _Refused("is truncated")
        # an item ended: count it in the containers it closes
        while left <= 1:
            if not outer:
                return at
            left, seen = outer.pop()
        left -= 1
