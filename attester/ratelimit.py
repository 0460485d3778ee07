"""Rate limits per client IP and per app, with the ``limits`` library's fixed windows.

Storage: ``memory`` (:class:`LocalCounterStorage`: per process, so each replica and each
worker counts alone) or ``database`` (:class:`DatabaseCounterStorage`: a fixed-window counter
table in the service's own SQLite or PostgreSQL database, which holds across replicas).
``limits`` has no SQL backend (it offers Redis, Memcached, MongoDB and etcd), hence the
database one. Its MemoryStorage is not used either: it re-arms a timer thread every 10 ms
that scans every key under the keys' locks, and the lock waits it causes cost ~150 us per
request under load (measured with bench/bench_operations.py). The strategies, rate notation
and window arithmetic stay the library's.

The client IP is the TCP peer. ``X-Forwarded-For`` is read only when the peer is one of the
configured ``trusted_proxies``, and then from the right: the first address that is not a
trusted proxy is the client (the entries left of it are whatever the caller wrote).
IPv6 clients are counted per prefix (``rate_limits.ipv6_prefix``, /64 by default).
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import threading
import time
from collections.abc import Callable, Sequence

from fastapi import Request
from limits import RateLimitItem, parse_many
from limits.storage import Storage
from limits.strategies import FixedWindowRateLimiter
from sqlalchemy import Engine, case, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from attester import cooperative
from attester.errors import ProblemError
from attester.metrics import Metrics
from attester.settings import RateLimitSettings, Settings
from attester.storage.models import RateLimitCounter

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
ENDPOINTS = ("challenge", "registration", "renewal")
MAX_KEY = 255


# -- client address ------------------------------------------------------------------------
def parse_networks(values: Sequence[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def _in(address: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: Sequence[Network]) -> bool:
    return any(address in network for network in networks)


def _unmapped(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    # a dual-stack socket shows IPv4 callers as ::ffff:a.b.c.d
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The caller's address: the peer, or (behind trusted proxies) the rightmost untrusted hop."""
    try:
        address = _unmapped(ipaddress.ip_address(peer or ""))
    except ValueError:
        return None
    if not trusted or not forwarded_for or not _in(address, trusted):
        return address
    for hop in reversed(forwarded_for.split(",")):
        try:
            hop_address = _unmapped(ipaddress.ip_address(hop.strip()))
        except ValueError:
            # a proxy we trust wrote something unusable: count the last good hop
            return address
        address = hop_address
        if not _in(address, trusted):
            return address
    return address


def client_key(address: ipaddress.IPv4Address | ipaddress.IPv6Address | None, ipv6_prefix: int) -> str:
    """The rate-limit key of an address (an IPv6 address by its prefix)."""
    if address is None:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))
    return str(address)


# -- database storage ----------------------------------------------------------------------
def _stored_key(key: str) -> str:
    """The key as stored: long keys (an app's client_id may be 255 characters) are hashed
    rather than cut, so two apps cannot share a counter."""
    if len(key) <= MAX_KEY:
        return key
    return key[:160] + "#" + hashlib.sha256(key.encode()).hexdigest()


class DatabaseCounterStorage(Storage):
    """Fixed-window counters in the ``rate_limit_counters`` table (holds across replicas).

    ``incr`` is one ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` statement: a counter
    whose window has passed restarts at ``amount``, else it grows; both SQLite and
    PostgreSQL execute it atomically per row, so concurrent replicas never lose a hit.
    """

    STORAGE_SCHEME = None
    PURGE_EVERY = 1024

    def __init__(self, engine: Engine, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.engine = engine
        self.clock = clock
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        self._writes = 0

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return SQLAlchemyError

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = self.clock()
        table = RateLimitCounter.__table__
        insert = self._insert(table).values(  # type: ignore[arg-type]
            key=_stored_key(key), count=amount, expires_at=now + expiry
        )
        expired = table.c.expires_at <= now
        stmt = insert.on_conflict_do_update(
            index_elements=[table.c.key],
            set_={
                "count": case((expired, amount), else_=table.c.count + amount),
                "expires_at": case((expired, now + expiry), else_=table.c.expires_at),
            },
        ).returning(table.c.count)
        with self.engine.begin() as connection:
            count = int(connection.execute(stmt).scalar_one())
        self._writes += 1
        if self._writes % self.PURGE_EVERY == 0:
            self.purge(now)
        return count

    def _row(self, key: str) -> tuple[int, float] | None:
        table = RateLimitCounter.__table__
        with self.engine.connect() as connection:
            row = connection.execute(
                select(table.c.count, table.c.expires_at).where(table.c.key == _stored_key(key))
            ).first()
        if row is None or row[1] <= self.clock():
            return None
        return int(row[0]), float(row[1])

    def get(self, key: str) -> int:
        row = self._row(key)
        return 0 if row is None else row[0]

    def get_expiry(self, key: str) -> float:
        row = self._row(key)
        return self.clock() if row is None else row[1]

    def check(self) -> bool:
        try:
            with self.engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
        except SQLAlchemyError:
            return False
        return True

    def reset(self) -> int | None:
        with self.engine.begin() as connection:
            return int(connection.execute(delete(RateLimitCounter)).rowcount or 0)

    def clear(self, key: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(delete(RateLimitCounter).where(RateLimitCounter.key == _stored_key(key)))

    def purge(self, now: float) -> int:
        """Drop counters whose window has passed."""
        with self.engine.begin() as connection:
            result = connection.execute(
                delete(RateLimitCounter).where(RateLimitCounter.expires_at <= now)
            )
            return int(result.rowcount or 0)


# -- in-memory storage ---------------------------------------------------------------------
class LocalCounterStorage(Storage):
    """Fixed-window counters in a dict, no threads: expired windows restart when next hit,
    and are dropped in one sweep every ``PURGE_EVERY`` increments (amortised O(1))."""

    STORAGE_SCHEME = None
    PURGE_EVERY = 4096

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.clock = clock
        self._counters: dict[str, list[float]] = {}  # key -> [count, window end]
        self._lock = threading.Lock()
        self._writes = 0

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = self.clock()
        with self._lock:
            entry = self._counters.get(key)
            if entry is None or entry[1] <= now:
                entry = self._counters[key] = [amount, now + expiry]
            else:
                entry[0] += amount
            self._writes += 1
            if self._writes % self.PURGE_EVERY == 0:
                self._counters = {k: v for k, v in self._counters.items() if v[1] > now}
            return int(entry[0])

    def _live(self, key: str) -> list[float] | None:
        entry = self._counters.get(key)
        return entry if entry is not None and entry[1] > self.clock() else None

    def get(self, key: str) -> int:
        entry = self._live(key)
        return 0 if entry is None else int(entry[0])

    def get_expiry(self, key: str) -> float:
        entry = self._live(key)
        return self.clock() if entry is None else entry[1]

    def check(self) -> bool:
        return True

    def reset(self) -> int | None:
        with self._lock:
            count, self._counters = len(self._counters), {}
        return count

    def clear(self, key: str) -> None:
        with self._lock:
            self._counters.pop(key, None)


# -- the limiter ---------------------------------------------------------------------------
class RateLimits:
    """The configured limits, checked by route dependencies (IP) and the service (app)."""

    def __init__(
        self,
        settings: Settings,
        *,
        storage: Storage,
        clock: Callable[[], float],
        metrics: Metrics,
    ) -> None:
        config: RateLimitSettings = settings.rate_limits
        self.enabled = config.enabled
        self.storage = storage
        self.clock = clock
        self.metrics = metrics
        self.ipv6_prefix = config.ipv6_prefix
        self.trusted = parse_networks(settings.trusted_proxies)
        self._limiter = FixedWindowRateLimiter(storage)
        self._rules: dict[tuple[str, str], list[RateLimitItem]] = {}
        if self.enabled:
            for endpoint in ENDPOINTS:
                for scope in ("ip", "app"):
                    text = getattr(config, f"{endpoint}_per_{scope}", "")
                    if text:
                        self._rules[(endpoint, scope)] = list(parse_many(text))

    def hit(self, endpoint: str, scope: str, key: str) -> None:
        """Count one request; raise ``rate_limited`` (429, Retry-After) over any limit."""
        if (endpoint, scope) not in self._rules:
            return
        if isinstance(self.storage, LocalCounterStorage):
            self._hit(endpoint, scope, key)
        else:  # a write to the database: not on the event loop (cooperative.py)
            cooperative.blocking(self._hit, endpoint, scope, key)

    def _hit(self, endpoint: str, scope: str, key: str) -> None:
        for item in self._rules.get((endpoint, scope), ()):
            if not self._limiter.hit(item, endpoint, scope, key):
                reset = self._limiter.get_window_stats(item, endpoint, scope, key).reset_time
                retry_after = max(1, math.ceil(reset - self.clock()))
                self.metrics.rate_limited.labels(endpoint, scope).inc()
                raise ProblemError(
                    "rate_limited",
                    "too many requests; retry later",
                    headers={"Retry-After": str(retry_after)},
                    retry_after=retry_after,
                    scope=scope,
                    limit=str(item),
                )

    def hit_app(self, endpoint: str, client_id: str) -> None:
        self.hit(endpoint, "app", client_id)

    def address(self, request: Request) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The caller's address (``trusted_proxies`` applied)."""
        peer = request.client.host if request.client else None
        forwarded = request.headers.get("x-forwarded-for") if self.trusted else None
        return client_address(peer, forwarded, self.trusted)

    def client(self, request: Request) -> str:
        return client_key(self.address(request), self.ipv6_prefix)

    def check_ip(self, endpoint: str, request: Request) -> None:
        """Count the caller's request to ``endpoint`` (first thing a limited route does).

        Called from the route body rather than as a FastAPI dependency: resolving a
        dependency costs more than the check itself.
        """
        if (endpoint, "ip") in self._rules:
            self.hit(endpoint, "ip", self.client(request))

    async def check_ip_async(self, endpoint: str, request: Request) -> None:
        """:meth:`check_ip` for async routes: the database storage runs in the thread pool."""
        if (endpoint, "ip") not in self._rules:
            return
        if isinstance(self.storage, LocalCounterStorage):
            self.hit(endpoint, "ip", self.client(request))
        else:
            from starlette.concurrency import run_in_threadpool

            await run_in_threadpool(self.hit, endpoint, "ip", self.client(request))


def build_rate_limits(
    settings: Settings, *, engine: Engine, clock: Callable[[], float], metrics: Metrics
) -> RateLimits:
    """The configured storage: in-memory (per process) or the database (across replicas)."""
    storage: Storage
    if settings.rate_limits.storage == "database":
        storage = DatabaseCounterStorage(engine, clock=clock)
    else:
        storage = LocalCounterStorage(clock=clock)
    return RateLimits(settings, storage=storage, clock=clock, metrics=metrics)


__all__ = [
    "DatabaseCounterStorage",
    "LocalCounterStorage",
    "RateLimits",
    "build_rate_limits",
    "client_address",
    "client_key",
]
