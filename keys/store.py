"""File key store with rotation states.

Layout of the key directory (0700)::

    keys.json        metadata: one record per key (kid, alg, created_at, activates_at,
                     and for a key held in a PKCS#11 token: backend "pkcs11", its token key id)
    <kid>.pem        the private key of a file key, PKCS#8, mode 0600
    <kid>.x5c.pem    optional certificate chain of the key (leaf first, no trust anchor)

With a PKCS#11 token configured, new keys are generated in the token (keys/pkcs11.py) and
only their metadata is here; file keys made before keep working until they expire.

A key's state is a function of time, so every replica sharing the directory agrees:

* *next*: ``activates_at`` is in the future. Published in the JWKS, never signs.
* *active*: the key with the latest ``activates_at`` that is not in the future. Signs.
* *retired*: superseded by a newer active key. Still published until every JWT it can
  have signed has expired (``superseded_at + retention``).
* *expired*: superseded longer ago than that; no longer published.

Rotation makes a *next* key that activates after a pre-publication delay of at least the
JWKS ``max-age``, so an AS holding a JWKS fetched within max-age always knows the signing key.
"""

from __future__ import annotations

import base64
import enum
import fcntl
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keys.certs import CertificateError, check_chain, load_pem_chain
from keys.jwks import JwksDocument, public_jwk, thumbprint
from keys.pkcs11 import Pkcs11Error, Pkcs11Token
from keys.signer import FileSigner, Signer

log = logging.getLogger("attester.keys")

METADATA = "keys.json"
LOCK = ".lock"


class KeyStoreError(Exception):
    """The key directory is unusable or an operation on it is refused."""


class KeyState(enum.StrEnum):
    NEXT = "next"
    ACTIVE = "active"
    RETIRED = "retired"
    EXPIRED = "expired"


BACKENDS = ("file", "pkcs11")


@dataclass(frozen=True)
class KeyRecord:
    kid: str
    alg: str
    created_at: datetime
    activates_at: datetime
    # where the private key is: "file" (<kid>.pem) or "pkcs11" (token object with CKA_ID key_ref)
    backend: str = "file"
    key_ref: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kid": self.kid,
            "alg": self.alg,
            "created_at": self.created_at.isoformat(),
            "activates_at": self.activates_at.isoformat(),
        }
        if self.backend != "file":  # file records keep the round-1 format
            data.update(backend=self.backend, key_ref=self.key_ref)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyRecord:
        backend = str(data.get("backend", "file"))
        if backend not in BACKENDS:  # fail closed on a store written by a newer version
            raise ValueError(f"unknown key backend {backend!r}")
        key_ref = data.get("key_ref")
        return cls(
            kid=str(data["kid"]),
            alg=str(data["alg"]),
            created_at=datetime.fromisoformat(data["created_at"]),
            activates_at=datetime.fromisoformat(data["activates_at"]),
            backend=backend,
            key_ref=None if key_ref is None else str(key_ref),
        )


@dataclass(frozen=True)
class KeyStatus:
    record: KeyRecord
    state: KeyState
    # when a newer key took over (None while next or active)
    superseded_at: datetime | None
    # until when the key is published (None = while it is next or active)
    published_until: datetime | None


class KeyStore:
    """Signing keys in a directory; reloads when another process rotates them."""

    def __init__(
        self, directory: Path, *, retention: timedelta, token: Pkcs11Token | None = None
    ) -> None:
        self.directory = directory
        self.retention = retention
        # with a token, new keys are generated in it; without, as 0600 files
        self.token = token
        self._records: tuple[KeyRecord, ...] = ()
        self._signers: dict[str, Signer] = {}
        self._public: dict[str, dict[str, str]] = {}
        self._x5c: dict[str, tuple[str, ...]] = {}
        self._chains: dict[str, tuple[x509.Certificate, ...]] = {}
        # kid -> (latest notBefore, earliest notAfter) of its chain: when every link is valid
        self._x5c_windows: dict[str, tuple[datetime, datetime]] = {}
        self._x5c_warned: dict[str, float] = {}  # kid -> time.monotonic() of the last error log
        self._mtime_ns: int | None = None
        self._jwks_cache: tuple[JwksDocument, datetime, datetime] | None = None
        # (signer, from, until): the active key cannot change inside [from, until)
        self._active_cache: tuple[Signer, datetime, datetime] | None = None
        # a str, not a Path: reload() stats it on every issuance and every JWKS request
        self._metadata_path = str(directory / METADATA)
        self._checked_at = float("-inf")  # time.monotonic() of the last stat

    # -- set-up ----------------------------------------------------------------------
    def ensure_initialised(self, now: datetime) -> None:
        """Create the directory and a first active key when there is none."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        with self._locked():
            if not self._read_records():
                self._add_key(now, activates_at=now)
        self.reload(force=True)

    def rotate(self, now: datetime, *, delay: timedelta) -> KeyRecord:
        """Create a *next* key that becomes active at ``now + delay``."""
        with self._locked():
            records = self._read_records()
            pending = [r for r in records if r.activates_at > now]
            if pending:
                raise KeyStoreError(
                    f"key {pending[0].kid} is already waiting to become active at "
                    f"{pending[0].activates_at.isoformat()}; rotate again after that"
                )
            record = self._add_key(now, activates_at=now + delay)
        self.reload(force=True)
        return record

    # -- reading ---------------------------------------------------------------------
    def reload(self, *, force: bool = False, unless_checked_within: float = 0.0) -> None:
        """Re-read the metadata if it changed on disk (cheap: one stat).

        ``unless_checked_within`` (seconds) skips even the stat when the last one is that
        recent: issuance uses it, because a key rotated by another process is published
        at once but signs only after the pre-publication delay, so noticing it a second
        late changes nothing an AS can see.
        """
        checked = time.monotonic()
        if not force and unless_checked_within and checked - self._checked_at < unless_checked_within:
            return
        self._checked_at = checked
        try:
            mtime = os.stat(self._metadata_path).st_mtime_ns
        except FileNotFoundError as exc:
            raise KeyStoreError(f"no key metadata in {self.directory}") from exc
        if not force and mtime == self._mtime_ns:
            return
        records = self._read_records()
        signers: dict[str, Signer] = {}
        public: dict[str, dict[str, str]] = {}
        for record in records:
            signer = self._signers.get(record.kid) or self._load_signer(record)
            signers[record.kid] = signer
            public[record.kid] = self._public.get(record.kid) or {
                **public_jwk(signer.public_key()),
                "kid": record.kid,
                "alg": record.alg,
                "use": "sig",
            }
        chains = {
            r.kid: chain for r in records if (chain := self._load_chain(signers[r.kid])) is not None
        }
        x5c = {
            kid: tuple(
                base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in chain
            )
            for kid, chain in chains.items()
        }
        self._records, self._signers, self._public = records, signers, public
        self._chains, self._x5c = chains, x5c
        self._x5c_windows = {
            kid: (
                max(c.not_valid_before_utc for c in chain),
                min(c.not_valid_after_utc for c in chain),
            )
            for kid, chain in chains.items()
        }
        self._jwks_cache = None
        self._active_cache = None
        self._mtime_ns = mtime

    def statuses(self, now: datetime) -> list[KeyStatus]:
        """Every key with its state at ``now``, oldest first."""
        # a key created after ``now`` did not exist then (matters when asking about the past)
        existing = [r for r in self._records if r.created_at <= now]
        ordered = sorted(existing, key=lambda r: (r.activates_at, r.created_at))
        started = [r for r in ordered if r.activates_at <= now]
        active = started[-1] if started else None
        out = []
        for i, record in enumerate(ordered):
            if record.activates_at > now:
                out.append(KeyStatus(record, KeyState.NEXT, None, None))
            elif record is active:
                out.append(KeyStatus(record, KeyState.ACTIVE, None, None))
            else:
                superseded_at = ordered[i + 1].activates_at
                until = superseded_at + self.retention
                state = KeyState.RETIRED if now < until else KeyState.EXPIRED
                out.append(KeyStatus(record, state, superseded_at, until))
        return out

    def active_signer(self, now: datetime) -> Signer:
        """The key that signs at ``now``.

        Cached until the key state can next change (a key's creation or activation time)
        or a reload: recomputing every state per issuance was a visible share of it.
        """
        cached = self._active_cache
        if cached is not None and cached[1] <= now < cached[2]:
            return cached[0]
        for status in self.statuses(now):
            if status.state is KeyState.ACTIVE:
                signer = self._signers[status.record.kid]
                self._active_cache = (signer, now, self._next_change(now))
                return signer
        raise KeyStoreError("no active signing key")

    def _next_change(self, now: datetime) -> datetime:
        later = [t for r in self._records for t in (r.created_at, r.activates_at) if t > now]
        return min(later, default=datetime.max.replace(tzinfo=now.tzinfo))

    def jwks(self, now: datetime) -> JwksDocument:
        """Public keys of every next, active and retired key (never private members).

        The document is cached until the next state change (a key activating or a
        retired key's publication ending) or a reload.
        """
        cached = self._jwks_cache
        if cached is not None and cached[1] <= now < cached[2]:
            return cached[0]
        statuses = self.statuses(now)
        published = [self._public[s.record.kid] for s in statuses if s.state is not KeyState.EXPIRED]
        changes = [r.created_at for r in self._records if r.created_at > now]
        changes += [s.record.activates_at for s in statuses if s.record.activates_at > now]
        changes += [s.published_until for s in statuses if s.published_until and s.published_until > now]
        document = JwksDocument.build(published)
        self._jwks_cache = (document, now, min(changes, default=datetime.max.replace(tzinfo=now.tzinfo)))
        return document

    def public_key(self, kid: str) -> dict[str, str] | None:
        return self._public.get(kid)

    def x5c(self, kid: str) -> tuple[str, ...] | None:
        """The certificate chain configured for a key (``<kid>.x5c.pem``), base64 DER."""
        return self._x5c.get(kid)

    def x5c_valid(self, kid: str, start: datetime, end: datetime) -> tuple[str, ...] | None:
        """The chain of ``kid`` if every certificate in it is valid from ``start`` to ``end``.

        Fail closed for receivers (README "x5c"): a JWT must not carry a chain that is
        expired, not yet valid, or that expires before the JWT does, because a receiver that
        validates x5c would refuse it; without x5c it still resolves the key by kid (JWKS).
        An omitted chain is logged as an error, at most once a minute per key.
        """
        chain = self._x5c.get(kid)
        if chain is None:
            return None
        window = self._x5c_windows.get(kid)  # a reload may be publishing both maps right now
        if window is None:
            return None
        not_before, not_after = window
        if not_before <= start and end <= not_after:
            return chain
        last = self._x5c_warned.get(kid, float("-inf"))
        if time.monotonic() - last >= 60.0:
            self._x5c_warned[kid] = time.monotonic()
            log.error(
                "x5c omitted: the certificate chain of key %s is valid from %s to %s, "
                "not for a JWT valid from %s to %s; import a current chain "
                "(attester keys import-cert)",
                kid,
                not_before.isoformat(),
                not_after.isoformat(),
                start.isoformat(),
                end.isoformat(),
            )
        return None

    def chain(self, kid: str) -> tuple[x509.Certificate, ...] | None:
        """The parsed certificate chain of a key, leaf first (for expiry reports)."""
        return self._chains.get(kid)

    def signer(self, kid: str) -> Signer:
        """The signer of any published key (e.g. to sign its CSR before it is active)."""
        signer = self._signers.get(kid)
        if signer is None:
            raise KeyStoreError(f"no key with kid {kid}")
        return signer

    def import_certificate(
        self, kid: str, pem: bytes, now: datetime
    ) -> tuple[x509.Certificate, ...]:
        """Check a PEM chain against key ``kid`` (keys/certs.py) and store it as ``<kid>.x5c.pem``.

        Raises :class:`keys.certs.CertificateError` (with a code) when the chain does not fit.
        """
        self.reload(force=True)
        certs = load_pem_chain(pem)
        check_chain(certs, self.signer(kid).public_key(), now=now)
        body = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
        with self._locked():
            tmp = self.directory / f".{kid}.x5c.{secrets.token_hex(4)}"
            _write_private(tmp, body)
            os.replace(tmp, self.directory / f"{kid}.x5c.pem")
            # rewrite keys.json unchanged: its new mtime makes running services reload
            self._write_records(self._read_records())
        self.reload(force=True)
        return certs

    # -- internals -------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _read_records(self) -> tuple[KeyRecord, ...]:
        path = self.directory / METADATA
        if not path.exists():
            return ()
        try:
            data = json.loads(path.read_text())
            return tuple(KeyRecord.from_json(item) for item in data["keys"])
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyStoreError(f"{path} is not valid key metadata: {exc}") from exc

    def _add_key(self, now: datetime, *, activates_at: datetime) -> KeyRecord:
        if self.token is not None:
            key_ref, public = self.token.generate_key()
            kid = thumbprint(public_jwk(public))
            record = KeyRecord(
                kid=kid,
                alg="ES256",
                created_at=now,
                activates_at=activates_at,
                backend="pkcs11",
                key_ref=key_ref,
            )
        else:
            private_key = ec.generate_private_key(ec.SECP256R1())
            kid = thumbprint(public_jwk(private_key.public_key()))
            pem = private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            _write_private(self.directory / f"{kid}.pem", pem)
            record = KeyRecord(kid=kid, alg="ES256", created_at=now, activates_at=activates_at)
        self._write_records((*self._read_records(), record))
        return record

    def _write_records(self, records: tuple[KeyRecord, ...]) -> None:
        """Replace keys.json atomically (its new mtime makes every process reload)."""
        body = json.dumps({"keys": [r.to_json() for r in records]}, indent=2).encode()
        tmp = self.directory / f".{METADATA}.{secrets.token_hex(4)}"
        _write_private(tmp, body)
        os.replace(tmp, self.directory / METADATA)
        fsync_directory(self.directory)  # the rename itself must survive a crash

    def _load_signer(self, record: KeyRecord) -> Signer:
        if record.backend == "pkcs11":
            return self._load_token_signer(record)
        path = self.directory / f"{record.kid}.pem"
        try:
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                raise KeyStoreError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise KeyStoreError(f"cannot load signing key {record.kid}: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise KeyStoreError(f"signing key {record.kid} is not an EC key")
        if thumbprint(public_jwk(key.public_key())) != record.kid:
            raise KeyStoreError(f"signing key file {path.name} does not match its kid")
        return FileSigner(record.kid, key)

    def _load_token_signer(self, record: KeyRecord) -> Signer:
        if self.token is None or record.key_ref is None:
            raise KeyStoreError(
                f"key {record.kid} is in a PKCS#11 token, but no [pkcs11] token is configured"
            )
        signer = self.token.signer(record.kid, record.key_ref)  # raises Pkcs11Error with a code
        if thumbprint(public_jwk(signer.public_key())) != record.kid:
            raise Pkcs11Error(
                "pkcs11_key_mismatch", f"the token key {record.key_ref} does not match kid {record.kid}"
            )
        return signer

    def _load_chain(self, signer: Signer) -> tuple[x509.Certificate, ...] | None:
        """Load ``<kid>.x5c.pem`` (leaf first, without the trust anchor) when present.

        The links are checked as at import (keys/certs.py), but not the validity dates: an
        expiring chain is reported by ``attester keys list``, it does not stop the service,
        and a chain not valid for a JWT's lifetime is left out of it (:meth:`x5c_valid`).
        """
        path = self.directory / f"{signer.kid}.x5c.pem"
        if not path.exists():
            return None
        try:
            certs = load_pem_chain(path.read_bytes())
            check_chain(certs, signer.public_key(), now=None)
        except CertificateError as exc:
            raise KeyStoreError(f"{path.name}: {exc} [{exc.code}]") from exc
        return certs


def fsync_directory(path: Path) -> None:
    """Make a create or rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_private(path: Path, data: bytes) -> None:
    """Write a new file readable by the owner only, durably."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
