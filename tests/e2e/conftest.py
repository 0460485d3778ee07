"""Fixtures for end-to-end tests against node-oidc-provider (tests/e2e/as/server.mjs).

The AS is a Node program installed with ``npm ci --prefix tests/e2e/as``; when that was not run,
or ``node`` is missing, every test in this folder is skipped with the reason. Every test here is
marked ``e2e``.

* ``start_as(jwks_uri, **options)`` starts one AS trusting the attester whose JWKS is at
  ``jwks_uri`` and stops it when the test ends (``start_as_module``: when the module ends).
  Options: ``client_id``, ``dpop_client_id``, ``attester_issuer``, ``jwks_cooldown_ms``,
  ``jwks_cache_max_age_ms`` (see e2e_support.run_as).
* ``jwks_server`` serves a JWKS from loopback (stands in for the attester in harness tests).

The full chain (real ``attester serve`` subprocess, AS, revocation-list stand-in, simulated
Android and iOS devices) is ``tests/e2e/stack.py``'s ``running_stack``; the device and rotation
tests (``test_e2e_devices.py``, ``test_e2e_rotation.py``) start one per module.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.e2e.e2e_support import JwksServer, StartAs, run_as, skip_reason
from tests.support import REQUIRE_ALL


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test in this folder ``e2e``; skip them all when the AS cannot run."""
    del config
    here = Path(__file__).resolve().parent
    reason = skip_reason()
    if reason is not None and REQUIRE_ALL:
        raise pytest.UsageError(f"end-to-end tests cannot run: {reason} (ATTESTER_TESTS_REQUIRE_ALL=1)")
    for item in items:
        if here not in Path(str(item.fspath)).resolve().parents:
            continue
        item.add_marker(pytest.mark.e2e)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def start_as() -> Iterator[StartAs]:
    """``start_as(jwks_uri, **options) -> RunningAs``; stopped when the test ends."""
    with ExitStack() as stack:
        yield lambda jwks_uri, **options: stack.enter_context(run_as(jwks_uri, **options))


@pytest.fixture(scope="module")
def start_as_module() -> Iterator[StartAs]:
    """Module-scoped ``start_as``: one AS shared by a module's tests."""
    with ExitStack() as stack:
        yield lambda jwks_uri, **options: stack.enter_context(run_as(jwks_uri, **options))


@pytest.fixture(scope="module")
def jwks_server() -> Iterator[JwksServer]:
    """A module-scoped loopback JWKS server standing in for the attester's jwks_uri."""
    with JwksServer() as server:
        yield server
