"""Challenges: MAC-protected, single use across replicas sharing the store."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import pytest

from attester.errors import ProblemError
from attester.service import AttesterService, build_service
from attester.settings import Settings
from tests.support import MutableClock


def _code(fn, *args):  # type: ignore[no-untyped-def]
    with pytest.raises(ProblemError) as info:
        fn(*args)
    return info.value.code


def test_challenge_issued_has_128_random_bits_and_mac(service: AttesterService, clock: MutableClock) -> None:
    first = service.challenges.issue(clock())
    second = service.challenges.issue(clock())
    raw = base64.urlsafe_b64decode(first + "=")
    assert len(raw) == 41 and first != second
    assert raw[9:25] != base64.urlsafe_b64decode(second + "=")[9:25]


def test_challenge_redeemed_twice_is_replayed(service: AttesterService, clock: MutableClock) -> None:
    challenge = service.challenges.issue(clock())
    assert service.challenges.redeem(challenge, clock()).text == challenge
    assert _code(service.challenges.redeem, challenge, clock()) == "challenge_replayed"


def test_challenge_too_old_is_expired(service: AttesterService, clock: MutableClock) -> None:
    challenge = service.challenges.issue(clock())
    clock.advance(service.settings.challenge_lifetime + 1)
    assert _code(service.challenges.redeem, challenge, clock()) == "challenge_expired"


@pytest.mark.parametrize("position", [0, 5, 20, 40])
def test_challenge_altered_byte_is_invalid(service: AttesterService, clock: MutableClock, position: int) -> None:
    raw = bytearray(base64.urlsafe_b64decode(service.challenges.issue(clock()) + "="))
    raw[position] ^= 0x01
    altered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert _code(service.challenges.redeem, altered, clock()) == "challenge_invalid"


@pytest.mark.parametrize("value", ["", "abc", "A" * 55, "!" * 55, None, 42, "A" * 10_000])
def test_challenge_garbage_is_invalid(service: AttesterService, clock: MutableClock, value: object) -> None:
    assert _code(service.challenges.redeem, value, clock()) == "challenge_invalid"


def test_challenge_from_another_secret_is_invalid(
    make_settings, clock: MutableClock, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    one = build_service(make_settings(data_dir=tmp_path / "one"), clock=clock)
    two = build_service(make_settings(data_dir=tmp_path / "two"), clock=clock)
    assert _code(two.challenges.redeem, one.challenges.issue(clock()), clock()) == "challenge_invalid"


def test_challenge_shared_store_two_replicas_redeem_once(
    make_settings, clock: MutableClock, tmp_path, database_url: str
) -> None:  # type: ignore[no-untyped-def]
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 32)
    replicas = [
        build_service(
            make_settings(data_dir=tmp_path / f"r{i}", database_url=database_url, challenge_secret_file=secret),
            clock=clock,
        )
        for i in range(2)
    ]
    challenges = [replicas[0].challenges.issue(clock()) for _ in range(20)]

    def race(challenge: str) -> list[str]:
        outcomes = []
        for replica in replicas:
            try:
                replica.challenges.redeem(challenge, clock())
                outcomes.append("ok")
            except ProblemError as exc:
                outcomes.append(exc.code)
        return outcomes

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(race, challenges + challenges))
    per_challenge: dict[str, list[str]] = {}
    for challenge, outcome in zip(challenges + challenges, results):
        per_challenge.setdefault(challenge, []).extend(outcome)
    for outcomes in per_challenge.values():
        assert outcomes.count("ok") == 1
        assert outcomes.count("challenge_replayed") == 3
    for replica in replicas:
        replica.store.dispose()


def test_challenge_lifetime_is_configurable(make_settings, clock: MutableClock) -> None:  # type: ignore[no-untyped-def]
    settings: Settings = make_settings(challenge_lifetime=30)
    svc = build_service(settings, clock=clock)
    challenge = svc.challenges.issue(clock())
    clock.advance(31)
    assert _code(svc.challenges.redeem, challenge, clock()) == "challenge_expired"
