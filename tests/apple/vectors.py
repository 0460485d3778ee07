"""The shared real-device vectors: where they live and how tests parametrize over them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

VECTORS_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "vectors"
MANIFEST = VECTORS_DIR / "MANIFEST.json"


def load_manifest_entries(kind: str) -> list[dict[str, Any]]:
    """Manifest entries of one kind; empty when the shared vectors are not checked out."""
    if not MANIFEST.is_file():
        return []
    manifest = json.loads(MANIFEST.read_text())
    return [entry for entry in manifest["files"] if entry["kind"] == kind]


def vector_params(kind: str) -> list[Any]:
    """``pytest.param`` per manifest entry (id = file stem), or one clearly skipped param."""
    entries = load_manifest_entries(kind)
    if not entries:
        reason = f"real App Attest vectors not found at {VECTORS_DIR}"
        return [pytest.param(None, id="no-vectors", marks=pytest.mark.skip(reason=reason))]
    return [pytest.param(entry, id=Path(entry["path"]).stem) for entry in entries]


def negative_params(kind: str) -> list[Any]:
    """``pytest.param`` per (entry, negative check) pair."""
    params: list[Any] = []
    for entry in load_manifest_entries(kind):
        for index, check in enumerate(entry.get("negative_checks", [])):
            params.append(pytest.param(entry, check, id=f"{Path(entry['path']).stem}-neg{index}"))
    if not params:
        reason = f"real App Attest vectors not found at {VECTORS_DIR}"
        return [pytest.param(None, None, id="no-vectors", marks=pytest.mark.skip(reason=reason))]
    return params
