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


def _head(data: bytes, at: int) -> tuple[int, int, int]:
    """The major type, the argument and the offset after the head at ``at``."""
    if at >= len(data):
        raise _Refused("is truncated")
    initial = data[at]
    major, info = initial >> 5, initial & 0x1F
    if info < 24:
        return major, info, at + 1
    if info < 28:
        end = at + 1 + (1 << (info - 24))
        if end > len(data):
            raise _Refused("is truncated")
        return major, int.from_bytes(data[at + 1 : end], "big"), end
    if info == 31:  # an indefinite length, or the break that ends one
        raise _Refused("has an indefinite length")
    raise _Refused("is not valid CBOR")  # 28-30: reserved


def _strict_end(data: bytes) -> int:
    """Where the item at the start of ``data`` ends, walked without recursion.

    Each open array or map is a frame: the items it still holds and, for a map, the keys
    seen so far (``None`` for an array). A key is compared by its major type and value (a
    string by its bytes), not by its encoding, so a key written twice with two different
    length encodings is still seen twice.
    """
    at = 0
    frames: list[tuple[int, set[tuple[int, int | bytes]] | None]] = []
    while True:
        in_key = frames and frames[-1][1] is not None and frames[-1][0] % 2 == 0
        major, argument, at = _head(data, at)
        if major in (2, 3):
            start, at = at, at + argument
            if at > len(data):
                raise _Refused("is truncated")
            value: int | bytes = data[start:at]
        else:
            value = argument
        if in_key:
            if major > 3:
                raise _Refused("has a map key that is not an integer or a string")
            keys = frames[-1][1]
            assert keys is not None
            if (major, value) in keys:
                raise _Refused("has a map with a key twice")
            keys.add((major, value))
        if major == 6:
            continue  # a tag: the item it tags follows, and stands in its place
        if major == 4 and argument:
            frames.append((argument, None))
            continue
        if major == 5 and argument:
            frames.append((2 * argument, set()))
            continue
        # an item ended: count it in the containers it closes
        while frames:
            left, keys = frames.pop()
            if left > 1:
                frames.append((left - 1, keys))
                break
        if not frames:
            return at
