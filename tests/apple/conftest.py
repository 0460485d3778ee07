"""Shared fixtures: a synthetic test root (and a look-alike root nobody trusts)."""

from __future__ import annotations

import pytest

from .synth import SynthRoot, make_test_root


@pytest.fixture(scope="session")
def synth_root() -> SynthRoot:
    return make_test_root()


@pytest.fixture(scope="session")
def other_root() -> SynthRoot:
    return make_test_root("Untrusted Look-alike Root CA")
