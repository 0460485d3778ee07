"""Read a PEM bundle of certificates into DER, without interpreting the certificates.

pyca's PEM loader also parses each certificate, and real attestation leaves exist that
it refuses (see certs.py); the verifier must see those bytes to judge them itself.
RFC 7468 textual encoding.
"""

from __future__ import annotations

import base64
import binascii
import re

_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL)


def pem_certificates(data: bytes) -> list[bytes]:
    """DER of every CERTIFICATE block, in order. ``ValueError`` on bad base64 or none."""
    ders = []
    for block in _BLOCK.findall(data):
        try:
            ders.append(base64.b64decode(b"".join(block.split()), validate=True))
        except binascii.Error as exc:
            raise ValueError("a PEM certificate block is not valid base64") from exc
    if not ders:
        raise ValueError("no PEM certificate found")
    return ders
