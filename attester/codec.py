"""Decoding of the base64 fields callers send, shared by every platform route."""

from __future__ import annotations

import base64
import binascii
import re

from attester.errors import ProblemError

_BASE64 = re.compile(r"[A-Za-z0-9+/\-_]*={0,2}")


def decode_base64(text: str, *, code: str, what: str) -> bytes:
    """Decode base64 in the standard or URL-safe alphabet, padding optional.

    Raises ProblemError ``code`` naming ``what``; the caller's bytes are never echoed.
    """
    url = "-" in text or "_" in text
    std = "+" in text or "/" in text
    if not text or not _BASE64.fullmatch(text) or (url and std) or len(text.rstrip("=")) % 4 == 1:
        raise ProblemError(code, f"{what} is not valid base64")
    body = text.rstrip("=").translate(str.maketrans("-_", "+/"))
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ProblemError(code, f"{what} is not valid base64") from None
