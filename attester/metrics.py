"""Prometheus metrics: what the service counts, and the ``/metrics`` exposition.

https://prometheus.io/docs/instrumenting/writing_exporters/ and prometheus-client's
multiprocess mode (https://prometheus.github.io/client_python/multiprocess/).

Label values are bounded: requests are labelled by **route template** (``/v1/challenge``,
``/admin/v1/instances/{id}``; never the raw path, unknown paths are ``unmatched``), so
routes added later are covered without changes here; methods outside the usual set are
``other``, and error codes are the service's fixed codes. Counters and histograms live in a
registry per :class:`Metrics` (nothing global, nothing at import). Gauges that describe
shared state (key states, revocation-list age) are computed when scraped.

With ``attester serve --workers N`` the environment variable ``PROMETHEUS_MULTIPROC_DIR``
is set by the CLI; each worker then writes its counters there and a scrape on any worker
returns the sum over all workers.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from attester.service import AttesterService

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
PATH_CACHE_SIZE = 4096
# verification and issuance take milliseconds (ES256, chain walks), requests up to seconds
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Live(Collector):
    """Adapter: a function yielding metric families at scrape time."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()


@dataclass
class Outcome:
    """Filled in while a registration or renewal runs (the platform may be learnt late)."""

    platform: str = "unknown"


class Metrics:
    """The service's counters and histograms, and their exposition."""

    def __init__(self, *, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry(auto_describe=False)
        self._live: list[Collector] = []
        r = self.registry
        self.requests = Counter(
            "attester_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "attester_http_request_duration_seconds",
            "HTTP request duration by route template",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.verifications = Counter(
            "attester_verifications",
            "Registrations and renewals by platform, kind, outcome and problem code",
            ["platform", "kind", "outcome", "code"],
            registry=r,
        )
        self.verification_duration = Histogram(
            "attester_verification_duration_seconds",
            "Time spent verifying platform evidence (registration) or re-checking it (renewal)",
            ["platform", "kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.issuance_duration = Histogram(
            "attester_issuance_duration_seconds",
            "Time to build and sign one Client Attestation JWT",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.challenges_issued = Counter(
            "attester_challenges_issued", "Challenges handed out", registry=r
        )
        self.challenge_redemptions = Counter(
            "attester_challenge_redemptions",
            "Challenge redemptions by outcome (redeemed or the problem code)",
            ["outcome"],
            registry=r,
        )
        self.rate_limited = Counter(
            "attester_rate_limited",
            "Requests refused with 429, by endpoint and limit scope (ip or app)",
            ["endpoint", "scope"],
            registry=r,
        )
        # max over the workers (multiprocess mode): 1 while any of them could not apply the
        # last app registry reload (attester/registry_sync.py); a worker's /readyz shows only
        # its own state. A worker sets 0 as it exits (app.py, lifespan); one that is killed
        # while behind keeps its 1 until serve restarts (RUNBOOK).
        self.registry_behind = Gauge(
            "attester_app_registry_behind",
            "1 while a worker could not apply the last app registry reload (max over workers)",
            multiprocess_mode="max",
            registry=r,
        )
        # (route, method, status) -> (counter child, histogram child): labels() takes a lock
        # and builds a tuple each time; the cache keeps the per-request cost to two adds
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._app: Any = None
        self._templates: list[tuple[re.Pattern[str], str]] | None = None
        # raw path -> template; bounded, so random paths cannot grow it without limit
        self._by_path: dict[str, str] = {}

    # -- requests --------------------------------------------------------------------
    def bind_routes(self, app: Any) -> None:
        """The app whose route templates label requests (read on the first request)."""
        self._app = app
        self._templates = None
        self._by_path.clear()

    def _compile_templates(self) -> list[tuple[re.Pattern[str], str]]:
        # full templates, router prefixes included: the OpenAPI paths plus plain routes
        # such as /docs. Read from the public OpenAPI generator, not FastAPI's internals.
        from fastapi.openapi.utils import get_openapi
        from starlette.routing import compile_path

        routes = list(getattr(self._app, "routes", ()))
        templates = set(get_openapi(title="routes", version="0", routes=routes).get("paths", {}))
        templates |= {r.path for r in routes if isinstance(getattr(r, "path", None), str)}
        compiled = [(compile_path(t)[0], t) for t in sorted(templates)]
        # literal templates first, so /items/new wins over /items/{id}
        return sorted(compiled, key=lambda pair: ("{" in pair[1], pair[1]))

    def route_template(self, path: str) -> str:
        """The route template a raw path matches, or ``unmatched`` (bounded labels)."""
        template = self._by_path.get(path)
        if template is not None:
            return template
        if self._templates is None:
            self._templates = self._compile_templates() if self._app is not None else []
        template = next((t for regex, t in self._templates if regex.match(path)), UNMATCHED)
        if len(path) <= 256 and len(self._by_path) < PATH_CACHE_SIZE:
            self._by_path[path] = template
        return template

    def observe_request(self, scope: Any, status: int, seconds: float) -> None:
        """Called by the request middleware once per HTTP request."""
        method = scope.get("method", "")
        method = method if method in METHODS else "other"
        route = self.route_template(scope.get("path", ""))
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(route, method, str(status)),
                self.request_duration.labels(route),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    # -- use cases -------------------------------------------------------------------
    @contextmanager
    def outcome(self, kind: str, platform: str = "unknown") -> Iterator[Outcome]:
        """Count a registration or renewal as accepted, or rejected with its code."""
        state = Outcome(platform)
        try:
            yield state
        except Exception as exc:
            code = getattr(exc, "code", None)
            self.verifications.labels(
                state.platform,
                kind,
                "rejected" if isinstance(code, str) else "error",
                code if isinstance(code, str) else "internal_error",
            ).inc()
            raise
        self.verifications.labels(state.platform, kind, "accepted", "").inc()

    @contextmanager
    def timed(self, histogram: Any) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            histogram.observe(time.perf_counter() - started)

    # -- exposition ------------------------------------------------------------------
    def add_live(self, collect: Callable[[], Iterable[Metric]]) -> None:
        """Register gauges computed at scrape time from shared state (keys, lists)."""
        collector = _Live(collect)
        self._live.append(collector)
        self.registry.register(collector)

    def render(self) -> tuple[bytes, str]:
        """The text exposition; in multiprocess mode, summed over every worker."""
        registry = self.registry
        if self.multiprocess_dir:
            registry = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
            for collector in self._live:
                registry.register(collector)
        return generate_latest(registry), CONTENT_TYPE_LATEST


def service_gauges(service: AttesterService) -> Iterator[Metric]:
    """Gauges read from shared state when scraped: key states, revocation-list ages."""
    from prometheus_client.core import GaugeMetricFamily

    from keys.store import KeyState

    now = service.clock()
    keys = GaugeMetricFamily(
        "attester_signing_keys", "Signing keys by rotation state", labels=["state"]
    )
    try:
        service.key_store.reload()
        states = [s.state.value for s in service.key_store.statuses(now)]
    except Exception:  # noqa: BLE001 - a scrape reports what it can
        states = []
    for state in KeyState:
        keys.add_metric([state.value], states.count(state.value))
    yield keys
    ages = GaugeMetricFamily(
        "attester_revocation_list_age_seconds",
        "Seconds since the platform revocation list in use was fetched",
        labels=["platform"],
    )
    for name in sorted(service.platforms):
        age_of = getattr(service.platforms[name], "revocation_list_age", None)
        age = age_of(now) if age_of is not None else None
        if age is not None:
            ages.add_metric([name], age)
    yield ages


def metrics_from_environment() -> Metrics:
    """Metrics in multiprocess mode when ``PROMETHEUS_MULTIPROC_DIR`` is set (by ``serve``)."""
    return Metrics(multiprocess_dir=os.environ.get(MULTIPROC_ENV) or None)


__all__ = ["MULTIPROC_ENV", "Metrics", "Outcome", "metrics_from_environment", "service_gauges"]
