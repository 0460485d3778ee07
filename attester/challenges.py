"""Self-validating, single-use challenges.

Wire form: base64url of ``version(1) || issued_at(8, big-endian seconds) || nonce(16) || mac(16)``
where ``mac`` is HMAC-SHA256 over the first 25 bytes under a secret all replicas share,
truncated to 128 bits. The MAC makes forged or altered challenges fail without a store
lookup; the store makes redemption single use across replicas.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from attester.errors import ProblemError
from attester.storage import Redemption, Store

_VERSION = 1
_NONCE_BYTES = 16
_MAC_BYTES = 16
_RAW_LEN = 1 + 8 + _NONCE_BYTES + _MAC_BYTES
_TEXT_LEN = 55  # base64url of 41 bytes, unpadded


@dataclass(frozen=True)
class Challenge:
    """A verified challenge: ``text`` is what the caller sent, ``raw`` its decoded bytes.

    Android apps pass ``raw`` to ``setAttestationChallenge``; Apple apps put ``text``
    into client_data.
    """

    text: str
    raw: bytes
    issued_at: datetime


def replayed() -> ProblemError:
    return ProblemError("challenge_replayed", "the challenge has been used already")


class ChallengeService:
    def __init__(self, *, secret: bytes, store: Store, lifetime: timedelta, skew: timedelta) -> None:
        if len(secret) < 32:
            raise ValueError("the challenge secret must be at least 32 bytes")
        self._secret = secret
        self._store = store
        self.lifetime = lifetime
        self._skew = skew
        self._redemptions = 0

    def issue(self, now: datetime) -> str:
        body = bytes([_VERSION]) + int(now.timestamp()).to_bytes(8, "big")
        body += secrets.token_bytes(_NONCE_BYTES)
        raw = body + self._mac(body)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def check(self, text: object, now: datetime) -> Challenge:
        """Verify MAC and age without redeeming (used to reject early)."""
        if not isinstance(text, str) or len(text) != _TEXT_LEN:
            raise ProblemError("challenge_invalid", "the challenge is not one this service issued")
        try:
            raw = base64.urlsafe_b64decode(text + "=")
        except (binascii.Error, ValueError):
            raise ProblemError(
                "challenge_invalid", "the challenge is not one this service issued"
            ) from None
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if len(raw) != _RAW_LEN or raw[0] != _VERSION or not hmac.compare_digest(
            mac, self._mac(body)
        ):
            raise ProblemError("challenge_invalid", "the challenge is not one this service issued")
        issued_at = datetime.fromtimestamp(int.from_bytes(raw[1:9], "big"), UTC)
        if issued_at > now + self._skew:
            raise ProblemError("challenge_invalid", "the challenge is not one this service issued")
        if now - issued_at > self.lifetime:
            raise ProblemError("challenge_expired", "the challenge has expired; fetch a new one")
        return Challenge(text=text, raw=raw, issued_at=issued_at)

    def redeem(self, text: object, now: datetime) -> Challenge:
        """Check the challenge and mark it used; a second redemption anywhere fails."""
        challenge = self.check(text, now)
        self.burn(self.redemption(challenge), now)
        return challenge

    def redemption(self, challenge: Challenge) -> Redemption:
        """What marks ``challenge`` used, for a caller that commits it with other writes."""
        digest = hashlib.sha256(challenge.raw).hexdigest()
        return Redemption(digest, challenge.issued_at + self.lifetime + self._skew)

    def check_unused(self, text: object, now: datetime) -> tuple[Challenge, Redemption]:
        """``check`` plus a read that refuses a challenge redeemed already.

        The caller commits the returned redemption with its own writes (a unique key, so
        of two concurrent uses only one commits), or burns it when it fails.
        """
        challenge = self.check(text, now)
        redemption = self.redemption(challenge)
        if self._store.challenge_redeemed(redemption.digest):
            raise replayed()
        return challenge, redemption

    def burn(self, redemption: Redemption, now: datetime) -> None:
        """Mark used now; ``challenge_replayed`` when it was used before (on any replica)."""
        if not self._store.redeem_challenge(redemption.digest, expires_at=redemption.expires_at):
            raise replayed()
        self.redeemed(now)

    def redeemed(self, now: datetime) -> None:
        """Count a redemption; every 256th purges the expired ones."""
        self._redemptions += 1
        if self._redemptions % 256 == 0:
            self._store.purge_expired(now - self._skew)

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._secret, body, hashlib.sha256).digest()[:_MAC_BYTES]
