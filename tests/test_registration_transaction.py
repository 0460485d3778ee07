"""One transaction per registration: challenge, instance and issued JWT commit together."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from attester.errors import ProblemError
from attester.platforms import VerifiedInstance
from attester.service import AttesterService
from attester.settings import AppConfig
from attester.storage import ChallengeAlreadyRedeemed, IssuedRow, Redemption, create_store
from tests.support import make_key_proof, new_instance_key, public_jwk

NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)


def _register(store: Any, thumb: str, redemption: Redemption) -> Any:
    return store.register_instance(
        platform="android", client_id="c", key_thumbprint=thumb, instance_jwk={"kty": "EC"},
        now=NOW, redemption=redemption,
        issued=IssuedRow("j-" + thumb, "kid", NOW, NOW + timedelta(hours=1)),
    )


def test_store_register_with_redeemed_challenge_writes_nothing(database_url: str) -> None:
    store = create_store(database_url)
    redemption = Redemption("e" * 64, NOW + timedelta(minutes=5))
    assert store.redeem_challenge(redemption.digest, expires_at=redemption.expires_at)
    with pytest.raises(ChallengeAlreadyRedeemed):
        _register(store, "t" * 43, redemption)
    assert store.instance_by_thumbprint("t" * 43) is None
    store.dispose()


def test_store_register_commits_redemption_instance_and_jwt_together(database_url: str) -> None:
    store = create_store(database_url)
    redemption = Redemption("f" * 64, NOW + timedelta(minutes=5))
    record = _register(store, "u" * 43, redemption)
    assert store.challenge_redeemed(redemption.digest)
    assert [jti for jti, _, _ in store.issued_for(record.id)] == ["j-" + "u" * 43]
    store.dispose()


def _app() -> AppConfig:
    return AppConfig(client_id="client-1")


def _attempt(service: AttesterService, challenge: str, *, fail: bool = False) -> str:
    key = new_instance_key()
    proof = make_key_proof(key, challenge=challenge, aud=service.settings.issuer,
                           iat=int(service.clock().timestamp()))

    def verify(_: object, __: datetime) -> VerifiedInstance:
        if fail:
            raise ProblemError("policy_violation", "refused for the test")
        return VerifiedInstance(platform="android", app=_app(), instance_jwk=public_jwk(key),
                                stored={}, replace_same_key=False)

    try:
        service.register(platform="android", challenge=challenge, key_proof=proof, verify=verify)
    except ProblemError as exc:
        return exc.code
    return "ok"


def test_register_failed_attempt_burns_challenge_then_replayed(service: AttesterService) -> None:
    challenge = service.challenges.issue(service.clock())
    assert _attempt(service, challenge, fail=True) == "policy_violation"
    assert _attempt(service, challenge) == "challenge_replayed"


def test_register_concurrent_uses_of_one_challenge_one_succeeds(service: AttesterService) -> None:
    challenges = [service.challenges.issue(service.clock()) for _ in range(6)]
    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(lambda c: _attempt(service, c), challenges * 3))
    for i in range(len(challenges)):
        mine = outcomes[i::len(challenges)]
        assert mine.count("ok") == 1 and mine.count("challenge_replayed") == 2, mine


def test_register_success_records_issued_jwt(service: AttesterService) -> None:
    challenge = service.challenges.issue(service.clock())
    key = new_instance_key()
    proof = make_key_proof(key, challenge=challenge, aud=service.settings.issuer,
                           iat=int(service.clock().timestamp()))
    result = service.register(
        platform="android", challenge=challenge, key_proof=proof,
        verify=lambda _c, _n: VerifiedInstance(platform="android", app=_app(), instance_jwk=public_jwk(key)),
    )
    record = service.store.instance_by_thumbprint(result["key_thumbprint"])
    assert record is not None
    assert len(service.store.issued_for(record.id)) == 1


def test_store_record_issued_with_redeemed_challenge_records_nothing(database_url: str) -> None:
    store = create_store(database_url)
    record = _register(store, "v" * 43, Redemption("a1" * 32, NOW + timedelta(minutes=5)))
    used = Redemption("a2" * 32, NOW + timedelta(minutes=5))
    assert store.redeem_challenge(used.digest, expires_at=used.expires_at)
    with pytest.raises(ChallengeAlreadyRedeemed):
        store.record_issued(jti="j-renewal", instance_id=record.id, kid="kid", issued_at=NOW,
                            expires_at=NOW + timedelta(hours=1), redemption=used)
    assert [jti for jti, _, _ in store.issued_for(record.id)] == ["j-" + "v" * 43]
    store.dispose()


def test_store_issue_for_instance_revoked_meanwhile_refused(database_url: str) -> None:
    """A revocation that committed after the caller's checks still refuses the JWT, also for
    apps without a status list; nothing is recorded and the challenge is not marked used."""
    from sqlalchemy import update

    from attester.storage.models import Instance
    from attester.storage.status_entries import InstanceNotActive

    store = create_store(database_url)
    record = _register(store, "w" * 43, Redemption("b2" * 32, NOW + timedelta(minutes=5)))
    with store.engine.begin() as connection:
        connection.execute(update(Instance).where(Instance.id == record.id).values(status="suspended"))
    redemption = Redemption("c3" * 32, NOW + timedelta(minutes=5))
    with pytest.raises(InstanceNotActive) as refused:
        store.issue_for(
            record.id,
            lambda _s, _i: IssuedRow("j-late", "kid", NOW, NOW + timedelta(hours=1)),
            redemption=redemption,
        )
    assert refused.value.status == "suspended"
    assert [jti for jti, _, _ in store.issued_for(record.id)] == ["j-" + "w" * 43]
    assert not store.challenge_redeemed(redemption.digest)
    store.dispose()
