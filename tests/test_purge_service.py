"""The purge as the service runs it: margins (clock skew, list ttl) and the periodic task."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from attester.app import create_app
from attester.service import AttesterService
from tests.support import MutableClock, live_server


def _seed(service: AttesterService, expired_ago: float) -> str:
    now = service.clock()
    record = service.store.register_instance(
        platform="android", client_id="c", key_thumbprint="t" * 43, instance_jwk={}, now=now
    )
    exp = now - timedelta(seconds=expired_ago)
    service.status_lists.allocate(record.id, expires_at=exp)
    service.store.record_issued(jti="j", instance_id=record.id, kid="k", issued_at=exp, expires_at=exp)
    return record.id


def test_purge_keeps_index_within_skew_and_ttl_margin(service: AttesterService, clock: MutableClock) -> None:
    lists = service.settings.status_list
    # a list token signed while the index was in use stays valid for its lifetime (> ttl)
    assert lists.lifetime > lists.ttl
    margin = service.settings.clock_skew + lists.lifetime
    _seed(service, expired_ago=margin - 1)
    assert service.purge()["status_entries"] == 0  # an AS may still accept the JWT or hold the list
    clock.advance(2)
    assert service.purge() == {"challenges": 0, "status_entries": 1, "issued_attestations": 1, "audit": 0}


def test_purge_runs_periodically_inside_serve(make_settings: Any, clock: MutableClock) -> None:
    app = create_app(make_settings(purge_interval=1), clock=clock)
    service: AttesterService = app.state.service
    instance = _seed(service, expired_ago=2 * 86400)
    with live_server(app):
        deadline = time.monotonic() + 10
        while service.store.issued_for(instance) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert service.store.issued_for(instance) == []
    from attester.storage.admin import AdminStore

    audit = AdminStore(service.store.engine).audit_records()
    assert audit and audit[-1].action == "purge" and audit[-1].actor == "system:purge"
    service.store.dispose()
