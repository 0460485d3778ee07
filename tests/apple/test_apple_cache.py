"""The verified-intermediate cache skips only what is safe to skip."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from unittest import mock

import pytest
from cryptography import x509

from platform_verifiers.apple import VerifiedLinkCache, verify_attestation
from platform_verifiers.apple import chain as chain_module
from platform_verifiers.errors import VerificationError

from .synth import SYNTH_NOW, SynthRoot, make_attestation

APP_ID = "ABCDE12345.com.example.wallet"
CDH = hashlib.sha256(b"client data").digest()


def _verify(
    root: SynthRoot, obj: bytes, key_id: bytes, cache: VerifiedLinkCache, **kw: object
) -> None:
    verify_attestation(
        attestation_object=obj,
        key_id=key_id,
        client_data_hash=CDH,
        app_ids=[APP_ID],
        environment="production",
        anchors=[root.anchor],
        now=kw.get("now", SYNTH_NOW),  # type: ignore[arg-type]
        verified_cache=cache,
    )


def _count_signature_checks(
    root: SynthRoot, obj: bytes, key_id: bytes, cache: VerifiedLinkCache
) -> int:
    real = chain_module._signed_by
    calls: list[tuple[x509.Certificate, x509.Certificate]] = []

    def spy(child: x509.Certificate, issuer: x509.Certificate) -> bool:
        calls.append((child, issuer))
        return real(child, issuer)

    with mock.patch.object(chain_module, "_signed_by", spy):
        _verify(root, obj, key_id, cache)
    return len(calls)


def test_verified_link_cache_second_verification_skips_intermediate_link(
    synth_root: SynthRoot,
) -> None:
    obj, key_id, _ = make_attestation(
        root_key=synth_root.key,
        root_cert=synth_root.cert,
        client_data_hash=CDH,
        app_id=APP_ID,
        environment="production",
        now=SYNTH_NOW,
    )
    cache = VerifiedLinkCache()
    assert _count_signature_checks(synth_root, obj, key_id, cache) == 2
    assert len(cache) == 1  # only the intermediate→root link, never the leaf link
    assert _count_signature_checks(synth_root, obj, key_id, cache) == 1


def test_verified_link_cache_hit_still_checks_validity_certificate_expired(
    synth_root: SynthRoot,
) -> None:
    obj, key_id, _ = make_attestation(
        root_key=synth_root.key,
        root_cert=synth_root.cert,
        client_data_hash=CDH,
        app_id=APP_ID,
        environment="production",
        now=SYNTH_NOW,
    )
    cache = VerifiedLinkCache()
    _verify(synth_root, obj, key_id, cache)
    with pytest.raises(VerificationError) as info:
        _verify(synth_root, obj, key_id, cache, now=SYNTH_NOW + timedelta(days=6 * 365))
    assert info.value.code == "certificate_expired"


def test_verified_link_cache_hit_does_not_excuse_forged_leaf_chain_signature_invalid(
    synth_root: SynthRoot,
) -> None:
    cache = VerifiedLinkCache()
    obj, key_id, _ = make_attestation(
        root_key=synth_root.key,
        root_cert=synth_root.cert,
        client_data_hash=CDH,
        app_id=APP_ID,
        environment="production",
        now=SYNTH_NOW,
        break_leaf_signature=True,
    )
    with pytest.raises(VerificationError) as info:
        _verify(synth_root, obj, key_id, cache)
    assert info.value.code == "chain_signature_invalid"


def test_verified_link_cache_over_capacity_evicts_oldest() -> None:
    cache = VerifiedLinkCache(max_entries=2)
    for key in (b"a", b"b", b"c"):
        cache.add(key)
    assert len(cache) == 2
    assert b"a" not in cache
    assert b"b" in cache and b"c" in cache


def test_verified_link_cache_zero_capacity_raises_value_error() -> None:
    with pytest.raises(ValueError):
        VerifiedLinkCache(max_entries=0)
