"""How platform verifiers plug into the service.

A platform adds a package under ``platform_verifiers/`` (pure verification) and a module
here that turns a request into :class:`VerifiedInstance` (registration) and re-checks a
stored instance (renewal). The service does the rest: challenge redemption, the key proof,
storage and issuance.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from attester.challenges import Challenge
from attester.settings import AppConfig, Settings
from attester.storage import InstanceRecord

T = TypeVar("T")


def unchanged_components(
    components: Mapping[str, T],
    before: Settings,
    after: Settings,
    section: Callable[[AppConfig], object],
) -> dict[str, T]:
    """The per-app components (by client_id) whose configuration ``section`` is the same in
    ``after`` as in ``before``: a registry reload keeps them (and their caches)."""

    def config(registry: Settings, client_id: str) -> object:
        app = registry.app(client_id)
        return section(app) if app else None

    return {
        client_id: component
        for client_id, component in components.items()
        if config(after, client_id) is not None
        and config(after, client_id) == config(before, client_id)
    }


@dataclass(frozen=True)
class VerifiedInstance:
    """What a platform verifier established about a new app instance."""

    platform: str
    app: AppConfig
    # the instance's public key: the key proof is checked with it and it becomes cnf.jwk
    instance_jwk: dict[str, str]
    # platform facts the store keeps (serials, App Attest key id, counter, receipt, ...)
    stored: dict[str, Any] = field(default_factory=dict)
    # an Android instance may re-attest the key it registered before
    replace_same_key: bool = False
    # per-registration claims for the issued JWT (e.g. configured Play Integrity verdicts)
    claims: dict[str, Any] = field(default_factory=dict)
    # an online step (Play Integrity decode, Apple receipt exchange) the service runs only
    # after the key proof passed, so a request failing it costs no call to Google or Apple
    online: Callable[[], VerifiedInstance] | None = None


class Platform(Protocol):
    """The renewal half of a platform plug-in (registration is a route of its own)."""

    name: str

    def renew(
        self,
        instance: InstanceRecord,
        request: dict[str, Any],
        *,
        app: AppConfig,
        challenge: Challenge,
        now: datetime,
    ) -> None:
        """Re-check the instance for a renewal; raise ProblemError/VerificationError to refuse."""
