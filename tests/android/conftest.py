"""Shared fixtures for the Android Key Attestation tests."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from platform_verifiers.android import AndroidPolicy, SecurityLevel
from platform_verifiers.android.pem import pem_certificates

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors"


def manifest_entries(*kinds: str) -> list[dict[str, Any]]:
    """Manifest entries of the given kinds ([] when the vectors are absent)."""
    path = VECTORS / "MANIFEST.json"
    if not path.exists():
        return []
    files: list[dict[str, Any]] = json.loads(path.read_text())["files"]
    return [f for f in files if f["kind"] in kinds]


def require_vectors() -> Path:
    if not (VECTORS / "MANIFEST.json").exists():
        pytest.skip(f"real vectors not found at {VECTORS} (expected ../shared/vectors)")
    return VECTORS


def load_chain(relative: str) -> list[bytes]:
    return pem_certificates((require_vectors() / relative).read_bytes())


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


# Real vectors include RSA and ML-DSA keys, unlocked dev devices and odd origins: the
# manifest verdict is about chain, roots and challenge, so its tests relax the rest.
CHAIN_ONLY_POLICY = AndroidPolicy(
    min_security_level=SecurityLevel.TRUSTED_ENVIRONMENT,
    require_verified_boot=False,
    require_device_locked=False,
    require_generated_origin=False,
    require_sign_purpose=False,
    require_ec_p256=False,
)
