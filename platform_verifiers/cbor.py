"""Decode exactly one CBOR item (App Attest objects, the RKP ProvisioningInfo extension)."""

from __future__ import annotations

import io
from typing import Any

import cbor2

from platform_verifiers.errors import VerificationError


def decode_single_cbor_item(data: bytes, *, code: str, what: str, **detail: Any) -> Any:
    """Decode exactly one CBOR item; trailing bytes mean the input is not what it claims.

    Every failure is a ``VerificationError`` with ``code`` (and ``detail``).
    """
    stream = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(stream).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise VerificationError(code, f"{what} is not valid CBOR", **detail) from exc
    if stream.tell() != len(data):
        raise VerificationError(code, f"{what} has bytes after the CBOR item", **detail)
    return item
