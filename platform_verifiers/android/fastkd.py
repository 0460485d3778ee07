"""A fast, strict DER reader for the KeyDescription extension, with pyasn1 as the schema of record.

Profiling the verifier (bench/bench_all.py, cProfile) showed pyasn1's schema-driven BER
decoder taking about 60% of a verification outside the signature checks: it builds and
clones a typed object per element. This module reads the same structure
(https://source.android.com/docs/security/features/keystore/attestation#schema) with a
plain tag-length-value walk into the very same frozen dataclasses of ``parse.py``.

It is deliberately narrower than pyasn1: it accepts only canonical DER of exactly the
schema in ``schema.py`` (minimal lengths and integers, primitive strings, no indefinite
lengths, no unknown enum values, no duplicates). Anything else, valid BER or garbage, is
*not recognised* and handed to :func:`parse.parse_key_description`, which decides
(and raises the stable ``key_description_malformed`` code). So the fast path can only
return what pyasn1 would return for the same bytes; tests compare both on every real
vector, on synthetic ones and on mutated ones.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from platform_verifiers.android import schema
from platform_verifiers.android.parse import (
    AttestationApplicationId,
    AuthorizationList,
    KeyDescription,
    PackageInfo,
    RootOfTrust,
    SecurityLevel,
    VerifiedBootState,
    parse_key_description,
)

_INTEGER, _BOOLEAN, _OCTETS, _NULL, _ENUMERATED, _SEQUENCE, _SET = (
    0x02, 0x01, 0x04, 0x05, 0x0A, 0x30, 0x31,
)


class NotRecognised(Exception):
    """The bytes are not canonical DER of the schema: let pyasn1 decide."""


def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int, int]:
    """(first identifier octet, tag number, content start, content end) at ``pos``."""
    if pos + 2 <= end:
        # the common case, short tag and short length, without the general walk below
        first = data[pos]
        length = data[pos + 1]
        if first & 0x1F != 0x1F and length < 0x80:
            stop = pos + 2 + length
            if stop > end:
                raise NotRecognised
            return first, first & 0x1F, pos + 2, stop
    if pos >= end:
        raise NotRecognised
    first = data[pos]
    pos += 1
    number = first & 0x1F
    if number == 0x1F:
        number = 0
        for _ in range(4):  # tag numbers up to 2**28: far beyond any KeyMint tag
            if pos >= end:
                raise NotRecognised
            octet = data[pos]
            pos += 1
            if number == 0 and octet == 0x80:
                raise NotRecognised  # non-minimal tag number
            number = (number << 7) | (octet & 0x7F)
            if not octet & 0x80:
                break
        else:
            raise NotRecognised
        if number < 0x1F:
            raise NotRecognised
    if pos >= end:
        raise NotRecognised
    length = data[pos]
    pos += 1
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 3 or pos + count > end or data[pos] == 0:
            raise NotRecognised  # indefinite, huge or non-minimal length
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
        if length < 0x80:
            raise NotRecognised
    if pos + length > end:
        raise NotRecognised
    return first, number, pos, pos + length


def _expect(data: bytes, pos: int, end: int, identifier: int) -> tuple[int, int]:
    first, _, start, stop = _tlv(data, pos, end)
    if first != identifier:
        raise NotRecognised
    return start, stop


def _integer(data: bytes, start: int, stop: int) -> int:
    if start == stop:
        raise NotRecognised
    if stop - start > 1 and (
        (data[start] == 0x00 and data[start + 1] < 0x80)
        or (data[start] == 0xFF and data[start + 1] >= 0x80)
    ):
        raise NotRecognised  # non-minimal two's complement
    return int.from_bytes(data[start:stop], "big", signed=True)


def _read_integer(data: bytes, pos: int, end: int, identifier: int = _INTEGER) -> tuple[int, int]:
    start, stop = _expect(data, pos, end, identifier)
    return _integer(data, start, stop), stop


def _read_octets(data: bytes, pos: int, end: int) -> tuple[bytes, int]:
    start, stop = _expect(data, pos, end, _OCTETS)
    return data[start:stop], stop


def _int_set(data: bytes, start: int, stop: int) -> tuple[int, ...]:
    values = []
    pos = start
    while pos < stop:
        value, pos = _read_integer(data, pos, stop)
        values.append(value)
    return tuple(values)


def _root_of_trust(data: bytes, start: int, stop: int) -> RootOfTrust:
    key, pos = _read_octets(data, start, stop)
    b_start, b_stop = _expect(data, pos, stop, _BOOLEAN)
    if b_stop - b_start != 1:
        raise NotRecognised
    # BER reads any non-zero octet as TRUE (real devices send 0x01), exactly like pyasn1
    locked = data[b_start] != 0
    state, pos = _read_integer(data, b_stop, stop, _ENUMERATED)
    if state not in _BOOT_STATES:
        raise NotRecognised
    boot_hash = None
    if pos < stop:
        boot_hash, pos = _read_octets(data, pos, stop)
    if pos != stop:
        raise NotRecognised
    return RootOfTrust(
        verified_boot_key=key,
        device_locked=locked,
        verified_boot_state=VerifiedBootState(state),
        verified_boot_hash=boot_hash,
    )


def _application_id(raw: bytes) -> AttestationApplicationId:
    start, stop = _expect(raw, 0, len(raw), _SEQUENCE)
    if stop != len(raw):
        raise NotRecognised
    p_start, p_stop = _expect(raw, start, stop, _SET)
    packages = []
    pos = p_start
    while pos < p_stop:
        i_start, i_stop = _expect(raw, pos, p_stop, _SEQUENCE)
        name, inner = _read_octets(raw, i_start, i_stop)
        version, inner = _read_integer(raw, inner, i_stop)
        if inner != i_stop:
            raise NotRecognised
        packages.append(PackageInfo(name=name.decode("utf-8", "replace"), version=version))
        pos = i_stop
    d_start, d_stop = _expect(raw, p_stop, stop, _SET)
    digests = []
    pos = d_start
    while pos < d_stop:
        digest, pos = _read_octets(raw, pos, d_stop)
        digests.append(digest)
    if d_stop != stop:
        raise NotRecognised
    return AttestationApplicationId(packages=tuple(packages), signature_digests=tuple(digests))


def _value(kind: str, data: bytes, start: int, stop: int) -> Any:
    """Decode the single inner element of one ``[tag] EXPLICIT`` entry."""
    first, _, v_start, v_stop = _tlv(data, start, stop)
    if v_stop != stop:
        raise NotRecognised
    if kind == "int" and first == _INTEGER:
        return _integer(data, v_start, v_stop)
    if kind == "set" and first == _SET:
        return _int_set(data, v_start, v_stop)
    if kind == "null" and first == _NULL and v_start == v_stop:
        return True
    if kind == "octets" and first == _OCTETS:
        return data[v_start:v_stop]
    if kind == "rot" and first == _SEQUENCE:
        return _root_of_trust(data, v_start, v_stop)
    if kind == "appid" and first == _OCTETS:
        return _application_id(data[v_start:v_stop])
    raise NotRecognised


def _kind(name: str, inner: Any) -> str:
    if name == "rootOfTrust":
        return "rot"
    if name == "attestationApplicationId":
        return "appid"
    type_name = type(inner).__name__
    return {"Integer": "int", "SetOf": "set", "Null": "null", "OctetString": "octets"}[type_name]


# tag number -> (dataclass field, value kind), derived from the one schema table
_TAGS: dict[int, tuple[str, str]] = {
    number: ("".join("_" + c.lower() if c.isupper() else c for c in name), _kind(name, inner))
    for number, (name, inner) in schema.AUTHORIZATION_TAGS.items()
}
# The fast path fills the instance dict directly: the generated __init__ of a frozen
# dataclass with 49 fields was a fifth of the decoding. Sound because every field has a
# plain default and there is no __post_init__ (a test pins both).
_AUTHORIZATION_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(AuthorizationList)
}


def _authorization(values: dict[str, Any], unknown: list[int]) -> AuthorizationList:
    result = object.__new__(AuthorizationList)
    result.__dict__.update(_AUTHORIZATION_DEFAULTS, **values, unknown_tags=tuple(unknown))
    return result


_SECURITY_LEVELS = frozenset(int(level) for level in SecurityLevel)
_BOOT_STATES = frozenset(int(state) for state in VerifiedBootState)


def _authorization_list(data: bytes, start: int, stop: int) -> AuthorizationList:
    """The entries' headers are read inline for the forms every KeyMint list uses (a tag
    number in one to three octets, a short length; an INTEGER inside): through ``_tlv``
    and ``_value`` this loop was most of the decoding. Any other form takes that way."""
    values: dict[str, Any] = {}
    unknown: list[int] = []
    pos = start
    tags = _TAGS
    try:
        while pos < stop:
            first = data[pos]
            number = first & 0x1F
            head = pos + 1
            if number == 0x1F:  # a tag number of 31 or more, in base 128 (X.690 8.1.2.4)
                octet = data[head]
                if 0x1F <= octet < 0x80:
                    number, head = octet, head + 1
                elif octet > 0x80 and data[head + 1] < 0x80:
                    number, head = ((octet & 0x7F) << 7) | data[head + 1], head + 2
                else:
                    head = 0  # not minimal, or longer: the general reader decides
            length = data[head] if head else 0x80
            if length < 0x80:
                e_start = head + 1
                e_stop = e_start + length
                if e_stop > stop:
                    raise NotRecognised
            else:
                first, number, e_start, e_stop = _tlv(data, pos, stop)
            if first & 0xE0 != 0xA0:  # context-specific, constructed: [n] EXPLICIT
                raise NotRecognised
            known = tags.get(number)
            if known is None:
                unknown.append(number)
            else:
                name, kind = known
                if name in values:
                    raise NotRecognised  # duplicate: pyasn1's path rejects it with its code
                inner = data[e_start + 1]
                if kind == "int" and data[e_start] == _INTEGER and inner < 0x80 and inner == e_stop - e_start - 2:
                    values[name] = _integer(data, e_start + 2, e_stop)  # one short INTEGER
                else:
                    values[name] = _value(kind, data, e_start, e_stop)
            pos = e_stop
    except IndexError:  # a header running past the data
        raise NotRecognised from None
    return _authorization(values, unknown)


def _security_level(data: bytes, pos: int, end: int) -> tuple[SecurityLevel, int]:
    value, pos = _read_integer(data, pos, end, _ENUMERATED)
    if value not in _SECURITY_LEVELS:
        raise NotRecognised
    return SecurityLevel(value), pos


def read_key_description(extension_value: bytes) -> KeyDescription:
    """The fast path alone: a ``KeyDescription``, or ``NotRecognised``."""
    data = bytes(extension_value)
    start, end = _expect(data, 0, len(data), _SEQUENCE)
    if end != len(data):
        raise NotRecognised
    attestation_version, pos = _read_integer(data, start, end)
    attestation_level, pos = _security_level(data, pos, end)
    keymint_version, pos = _read_integer(data, pos, end)
    keymint_level, pos = _security_level(data, pos, end)
    challenge, pos = _read_octets(data, pos, end)
    unique_id, pos = _read_octets(data, pos, end)
    s_start, s_stop = _expect(data, pos, end, _SEQUENCE)
    h_start, h_stop = _expect(data, s_stop, end, _SEQUENCE)
    if h_stop != end:
        raise NotRecognised
    return KeyDescription(
        attestation_version=attestation_version,
        attestation_security_level=attestation_level,
        keymint_version=keymint_version,
        keymint_security_level=keymint_level,
        attestation_challenge=challenge,
        unique_id=unique_id,
        software_enforced=_authorization_list(data, s_start, s_stop),
        hardware_enforced=_authorization_list(data, h_start, h_stop),
    )


def decode_key_description(extension_value: bytes) -> KeyDescription:
    """Decode the KeyDescription: the fast DER path, else pyasn1 (which also decides errors).

    Same result and the same error codes as :func:`parse.parse_key_description`.
    """
    try:
        return read_key_description(extension_value)
    except NotRecognised:
        return parse_key_description(extension_value)
