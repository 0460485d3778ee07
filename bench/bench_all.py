"""Every performance ratio of issue 12, measured in one run: prints figures, asserts nothing.

    python bench/bench_all.py [--quick] [--only SECTION ...] [--instances N]

Sections (``--only`` picks some; each prints its own table rows). Needs Debian ``wrk``
for ``docs``, PostgreSQL binaries for the PostgreSQL rows, pyattest (``bench`` extra) for ``peer``.

* ``verify``   Android (RSA-root and EC-root real chains) and Apple (real samples)
  in-process verification vs the bound of the same run: the pyca signature checks of
  the same chain (all links uncached; the leaf link alone with the verified-intermediate
  cache). Bound and measured alternate in short batches, so both see the same load.
* ``peer``     pyattest (the ``bench`` extra) on the same Apple samples.
* ``issue``    full issuance vs ES256 sign alone (the same FileSigner).
* ``docs``     JWKS and the status list (``GET /statuslists/0``) over HTTP:
  ``attester serve --workers 2`` and Debian ``wrk`` (required) as the load generator.
* ``register`` Android registrations over HTTP on 2 workers (SQLite, then PostgreSQL
  when its binaries exist), from 8 and from 32 connections, vs the in-process
  verification+issuance rate of the same chains, measured before and after the HTTP runs;
  under each, the CPU per registration of the workers, PostgreSQL and the load generator,
  and the workers' time runnable without a core and their preemptions (from /proc): where
  the time beyond the in-process figure goes.
* ``flat``     registration and renewal latency with 1k and with N (default 1M) stored
  instances, interleaved, on SQLite and PostgreSQL; the query plans of the hot lookups.

Numbers on a shared machine are noisy: read the ratios (each from one run), re-run
before quoting. ``--quick`` shortens every measurement (about a minute in total).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx
from bench_android import CASES, POLICY, VECTORS
from bench_apple import chain_signatures, load_samples, ours, pyattest_runner
from bench_registration_http import key_proof, write_bench_config

from platform_verifiers.android import (
    VerifiedLinkCache,
    google_hardware_roots,
    verify_android_attestation,
)
from platform_verifiers.android.certs import decode_certificate, signature_valid
from platform_verifiers.android.fastkd import decode_key_description
from platform_verifiers.android.pem import pem_certificates
from platform_verifiers.apple import VerifiedLinkCache as AppleCache
from tests.android.status_server import StatusServer
from tests.android.synth import make_chain, make_root
from tests.support import free_port, postgres_server, wait_until_healthy

ROWS: list[tuple[str, str, str, str]] = []  # (measure, figure, ratio, target)



def row(measure: str, figure: str, ratio: str = "", target: str = "") -> None:
    ROWS.append((measure, figure, ratio, target))
    print(f"  {measure:58} {figure:>22} {ratio:>8} {target:>8}", flush=True)


def ok(value: float, limit: float, *, at_most: bool) -> str:
    good = value <= limit if at_most else value >= limit
    return f"{'<=' if at_most else '>='}{limit:g} {'ok' if good else 'MISS'}"


# -- timing ------------------------------------------------------------------------
def interleaved(measures: dict[str, Callable[[], int]], seconds: float, rounds: int) -> dict[str, float]:
    """us/op of each measure, alternating short batches of each until ``seconds`` pass.

    On a shared machine the load changes within a second; alternating batches (each a few
    milliseconds) makes every measure see the same load, so their ratio is stable even
    when the absolute figures are not. The first ``rounds`` alternations are warm-up.
    """
    spent = {name: 0.0 for name in measures}
    done = {name: 0 for name in measures}
    for _ in range(rounds):
        for fn in measures.values():
            fn()  # warm-up (and the cache, for cached measures)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for name, fn in measures.items():
            started = time.perf_counter()
            done[name] += fn()
            spent[name] += time.perf_counter() - started
    return {name: spent[name] / done[name] * 1e6 for name in measures}


def batch(fn: Callable[[], object], n: int = 20) -> Callable[[], int]:
    def run() -> int:
        for _ in range(n):
            fn()
        return n

    return run


# -- verify ------------------------------------------------------------------------
def section_verify(seconds: float, rounds: int) -> None:
    print("in-process verification vs the pyca signature checks of the same chain")
    anchors = google_hardware_roots()
    for label, (file, at) in CASES.items():
        chain = pem_certificates((VECTORS / file).read_bytes())
        now = datetime.fromisoformat(at)
        certs = [decode_certificate(der, i) for i, der in enumerate(chain)]
        keys = [c.public_key() for c in certs[1:]]
        cache = VerifiedLinkCache()

        def links(certs: list[Any] = certs, keys: list[Any] = keys) -> None:
            for child, key in zip(certs, keys, strict=False):
                assert signature_valid(child, key)

        def verify(cache: VerifiedLinkCache | None, chain: list[bytes] = chain, now: datetime = now) -> None:
            verify_android_attestation(
                chain=chain, challenge=None, policy=POLICY, anchors=anchors,
                revocation=None, now=now, verified_cache=cache,
            )

        def floor(leaf_der: bytes = chain[0], key: Any = keys[0]) -> None:
            # what any verification of a new leaf does, its intermediates cached or not: read
            # the leaf (with its key), decode its KeyDescription, check the leaf link
            leaf = decode_certificate(leaf_der, 0)
            decode_key_description(leaf.key_descriptions[0])
            assert signature_valid(leaf, key)

        t = interleaved(
            {
                "bound": batch(links, 5),
                "ours": batch(lambda: verify(None), 5),
                "leaf": batch(lambda c=certs, k=keys: signature_valid(c[0], k[0])),
                "cached": batch(lambda c=cache: verify(c)),
                "floor": batch(floor),
            },
            seconds,
            rounds,
        )
        name = label.split(" (")[0]
        row(f"Android {name}: verify / {len(keys)} link checks", f"{t['ours']:.0f} / {t['bound']:.0f} us",
            f"{t['ours'] / t['bound']:.2f}", ok(t["ours"] / t["bound"], 1.5, at_most=True))
        row(f"Android {name}: cached verify / leaf link check", f"{t['cached']:.0f} / {t['leaf']:.0f} us",
            f"{t['cached'] / t['leaf']:.2f}", ok(t["cached"] / t["leaf"], 1.2, at_most=True))
        row(f"Android {name}: floor: leaf, KeyDescription, link / link",
            f"{t['floor']:.0f} / {t['leaf']:.0f} us", f"{t['floor'] / t['leaf']:.2f}", "(floor)")

    samples = load_samples()
    n = len(samples)
    t = interleaved(
        {
            "bound": chain_signatures(samples, leaf_only=False),
            "ours": ours(samples, None),
            "leaf": chain_signatures(samples, leaf_only=True),
            "cached": ours(samples, AppleCache()),
        },
        seconds,
        rounds,
    )
    # chain_signatures counts signature checks: two per attestation uncached, one cached
    bound = t["bound"] * 2
    row(f"Apple ({n} samples): verify / 2 P-384 checks", f"{t['ours']:.0f} / {bound:.0f} us",
        f"{t['ours'] / bound:.2f}", ok(t["ours"] / bound, 1.5, at_most=True))
    row("Apple: cached verify / leaf link check", f"{t['cached']:.0f} / {t['leaf']:.0f} us",
        f"{t['cached'] / t['leaf']:.2f}", ok(t["cached"] / t["leaf"], 1.2, at_most=True))


def section_peer(seconds: float, rounds: int) -> None:
    print("pyattest (the peer) on the same Apple samples")
    samples = load_samples()
    runner, refused = pyattest_runner(samples)
    if runner is None:
        row("pyattest", "not available", "", "")
        print(f"    note: {refused}")
        return
    accepted = [s for s in samples if s.name not in refused]
    t = interleaved({"peer": runner, "ours": ours(accepted, None)}, seconds, rounds)
    row(f"ours (no cache) vs pyattest, {len(accepted)}/{len(samples)} samples",
        f"{t['ours']:.0f} vs {t['peer']:.0f} us", f"{t['peer'] / t['ours']:.1f}x",
        ok(t["peer"] / t["ours"], 10, at_most=False))
    for name, why in refused.items():
        print(f"    pyattest refuses {name}: {why}")


# -- issue -------------------------------------------------------------------------
def section_issue(seconds: float, rounds: int) -> None:
    print("issuance vs ES256 sign alone")
    from attester.service import build_service
    from attester.settings import load_settings
    from tests.support import new_instance_key, public_jwk

    settings = load_settings(data_dir=Path(tempfile.mkdtemp(prefix="attester-bench-")))
    service = build_service(settings)
    app = settings.apps[0]
    now = datetime.now(UTC)
    signer = service.key_store.active_signer(now)
    jwk = public_jwk(new_instance_key())
    sample = service.issuer.issue(app=app, instance_jwk=jwk, now=now).jwt
    signing_input = sample.rsplit(".", 1)[0].encode()  # the same size as a real one
    t = interleaved(
        {
            "sign": batch(lambda: signer.sign(signing_input), 50),
            "issue": batch(lambda: service.issuer.issue(app=app, instance_jwk=jwk, now=now), 50),
        },
        seconds,
        rounds,
    )
    row("issuance rate / ES256 sign-alone rate", f"{1e6 / t['issue']:.0f} / {1e6 / t['sign']:.0f} /s",
        f"{t['sign'] / t['issue']:.2f}", ok(t["sign"] / t["issue"], 0.8, at_most=False))


# -- servers -----------------------------------------------------------------------
@dataclass
class Server:
    url: str
    work: Path
    root: Any
    pid: int = 0  # the serve process (its workers are its children)


@contextmanager
def serving(database_url: str | None, workers: int = 2, extra: tuple[str, ...] = ()) -> Iterator[Server]:
    """``attester serve`` with a synthetic Android test root and a loopback status list."""
    work = Path(tempfile.mkdtemp(prefix="attester-bench-"))
    root = make_root()
    status = StatusServer()
    status.body = b'{"entries": {}}'
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    write_bench_config(work, issuer=url, status_url=status.url, root=root, database_url=database_url)
    server = subprocess.Popen(
        [sys.executable, "-m", "attester.cli", "serve", "--config", str(work / "config.toml"),
         "--data-dir", str(work / "data"), "--port", str(port), "--workers", str(workers), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        wait_until_healthy(url, server)
        yield Server(url, work, root, server.pid)
    finally:
        server.terminate()
        server.wait(timeout=20)
        status.close()
        shutil.rmtree(work, ignore_errors=True)


def wrk(url: str, seconds: float, connections: int = 64, headers: tuple[str, ...] = ()) -> float | None:
    if shutil.which("wrk") is None:
        return None
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s",
         *(arg for header in headers for arg in ("-H", header)), url],
        capture_output=True, text=True, check=True,
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors from {url}:\n{out}")
    for line in out.splitlines():  # connections reset or dropped: counted as nothing, not as errors
        if "Socket errors" in line:
            print(f"    note: wrk {url}: {line.strip()} (the figure below counts answered requests)")
    return float(next(line for line in out.splitlines() if "Requests/sec" in line).split()[1])


def status_list_url(base: str) -> str:
    """List 0 of the service's Token Status Lists (issue 9): the metadata does not advertise
    it (its uri is in each JWT's ``status`` claim), so the path comes from the code."""
    from attester.status_list import PATH

    return base + PATH.format(list_id=0)


def section_docs(seconds: float) -> None:
    print("published documents over HTTP, 2 workers, wrk on loopback (separate process)")
    if shutil.which("wrk") is None:
        row("JWKS", "skipped: needs Debian wrk", "", "")
        return
    with serving(None) as server:
        # healthy means one worker answered: the other may still be starting, and each
        # builds its documents on first use; one second of load first, not counted
        wrk(server.url + "/.well-known/jwks.json", 1)
        wrk(status_list_url(server.url), 1)
        rate = wrk(server.url + "/.well-known/jwks.json", seconds)
        assert rate is not None
        row("JWKS, 2 workers", f"{rate:.0f} req/s", "", ok(rate, 5000, at_most=False))
        status = status_list_url(server.url)
        first = httpx.get(status)
        assert first.status_code == 200 and first.headers["content-type"] == "application/statuslist+jwt", first
        rate = wrk(status, seconds)
        assert rate is not None
        row("status list (GET /statuslists/0), 2 workers", f"{rate:.0f} req/s", "", ok(rate, 5000, at_most=False))
    # a new connection for every request: the workers' accept in Python, taking turns by
    # count (attester/workers.py), against uvicorn's own (serve --shared-socket); no target
    with serving(None) as turns, serving(None, extra=("--shared-socket",)) as shared:
        close = ("Connection: close",)
        for server in (turns, shared):  # both workers started and warm, not counted
            wrk(server.url + "/healthz", 1, connections=8, headers=close)
        rates: dict[str, list[float]] = {"turns": [], "shared": []}
        for name, server in [("turns", turns), ("shared", shared)] * 3:
            rate = wrk(server.url + "/healthz", max(1.0, seconds / 3), connections=8, headers=close)
            assert rate is not None
            rates[name].append(rate)
        taking, own = (statistics.median(rates[name]) for name in ("turns", "shared"))
        row("/healthz, new connection per request: taking turns / uvicorn's",
            f"{taking:.0f} / {own:.0f} req/s", f"{taking / own:.2f}", "")


# -- register ----------------------------------------------------------------------
def prepare_bodies(server: Server, count: int) -> list[dict[str, Any]]:
    """``count`` registrations, each its own device (own intermediates: the worst case)."""
    bodies = []
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for _ in range(count):
            challenge = http.post("/v1/challenge").json()["challenge"]
            chain = make_chain(challenge=base64.urlsafe_b64decode(challenge + "="), root=server.root)
            bodies.append({
                "certificate_chain": [base64.b64encode(c).decode() for c in chain.chain],
                "challenge": challenge,
                "key_proof": key_proof(chain.leaf_key, challenge, server.url),
            })
    return bodies


class InProcess:
    """Verification + key proof + issuance in this process, no HTTP, no storage: the
    service is built once; each body's chain has its own intermediates, so each body is
    timed once (a second time would find them in the service's cache)."""

    def __init__(self, server: Server, warm: dict[str, Any]) -> None:
        from attester.app import create_app
        from attester.settings import load_settings

        settings = load_settings(server.work / "config.toml", data_dir=server.work / "data")
        self.service = create_app(settings).state.service
        self.platform = self.service.platforms["android"]
        self.spent = 0.0
        self.done = 0
        self.run([warm])  # not counted
        self.spent = 0.0
        self.done = 0

    def run(self, bodies: list[dict[str, Any]]) -> None:
        """Time ``bodies``, adding to ``spent`` and ``done``."""
        from attester.platforms.android import AndroidRegistration

        service, platform = self.service, self.platform
        parsed = [AndroidRegistration(**b) for b in bodies]
        now = datetime.now(UTC)
        start = time.perf_counter()
        for body in parsed:
            challenge = service.challenges.check(body.challenge, now)
            verified = platform.verify(body, challenge, now)
            service.check_key_proof(body.key_proof, jwk=verified.instance_jwk, challenge=challenge, now=now)
            service.issuer.issue(app=verified.app, instance_jwk=verified.instance_jwk, now=now)
        self.spent += time.perf_counter() - start
        self.done += len(parsed)

    def rate(self) -> float:
        return self.done / self.spent

    def close(self) -> None:
        self.service.store.dispose()


class _Poster(asyncio.Protocol):
    """One keep-alive connection of the load generator: posts the next request when the
    answer to the last one is in (no pipelining). A protocol on uvloop, not asyncio's
    streams on its default loop: the load generator shares the two cores with the service,
    and with the streams it used 102-123 us of CPU per PostgreSQL registration, against
    80-89 us so (three alternated ``--only register`` runs of each)."""

    def __init__(self, requests: list[bytes], counts: list[int], done: asyncio.Future[None]) -> None:
        self.requests, self.counts, self.done = requests, counts, done
        self.transport: asyncio.Transport | None = None
        self.received = bytearray()
        self.length = -1  # the answer's size (head and body) once its head is in

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._next()

    def _next(self) -> None:
        assert self.transport is not None
        self.received.clear()
        self.length = -1
        if self.requests:
            self.transport.write(self.requests.pop())
        else:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.received += data
        if self.length < 0:
            end = self.received.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.received[:end]).lower()
            at = head.index(b"\r\ncontent-length:") + len(b"\r\ncontent-length:")
            stop = head.find(b"\r\n", at)
            self.length = end + 4 + int(head[at:stop if stop >= 0 else None])
        if len(self.received) >= self.length:
            self.counts[0 if self.received.startswith(b"HTTP/1.1 200") else 1] += 1
            self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done.done():
            return
        if exc is not None or self.received:  # the server closed it mid-answer, or failed
            self.done.set_exception(exc or ConnectionError("the server closed mid-answer"))
        else:
            self.done.set_result(None)


async def _post_all(port: int, requests: list[bytes], connections: int) -> tuple[int, int]:
    """Post ``requests`` (whole HTTP requests, taken from the end) from ``connections``
    connections; the numbers of 200 answers and of others."""
    loop = asyncio.get_running_loop()
    counts = [0, 0]
    done = [loop.create_future() for _ in range(connections)]
    for future in done:
        await loop.create_connection(lambda f=future: _Poster(requests, counts, f), "127.0.0.1", port)
    await asyncio.gather(*done)
    return counts[0], counts[1]


def _load(port: int, bodies: list[bytes], connections: int, out: Any) -> None:
    """The load generator's process (a separate one, as wrk would be)."""
    import uvloop

    requests = [
        b"POST /v1/android/attestations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode() + b"\r\n\r\n" + body
        for body in reversed(bodies)
    ]
    start = time.perf_counter()
    good, bad = uvloop.run(_post_all(port, requests, connections))
    out.put((good, bad, time.perf_counter() - start))


def http_register(
    server: Server, rounds: list[list[dict[str, Any]]], connections: int, between: Callable[[], None]
) -> tuple[float, int]:
    """Registrations per second over HTTP, the bodies posted in ``rounds`` with
    ``between()`` (the in-process measure) before each round and after the last."""
    port = int(server.url.rsplit(":", 1)[1])
    good = bad = 0
    elapsed = wall = 0.0
    spent: dict[str, float] = {}
    split: list[int] = []
    queued, preempted = 0.0, 0  # the workers' time runnable without a core (s), their preemptions
    for bodies in rounds:
        between()
        encoded = [json.dumps(b).encode() for b in bodies]
        queue: Any = multiprocessing.Queue()
        before, load_before, started = _cpu_by_role(server.pid), _children_cpu(), time.perf_counter()
        scheduled = _scheduling(server.pid)
        proc = multiprocessing.Process(target=_load, args=(port, encoded, connections, queue))
        proc.start()
        if not split and len(bodies) >= 4 * connections:  # else they close before all open
            split = _connections_per_worker(server.pid, port, connections)
        round_good, round_bad, round_elapsed = queue.get(timeout=600)
        proc.join()
        after, wall = _cpu_by_role(server.pid), wall + time.perf_counter() - started
        waited = [a - b for a, b in zip(_scheduling(server.pid), scheduled)]
        queued, preempted = queued + waited[0], preempted + waited[1]
        good, bad, elapsed = good + round_good, bad + round_bad, elapsed + round_elapsed
        if before and after:  # /proc: where the two cores went
            for role in after:
                spent[role] = spent.get(role, 0.0) + after[role] - before.get(role, 0.0)
            spent["load generator"] = spent.get("load generator", 0.0) + _children_cpu() - load_before
    between()
    if spent:
        total = sum(len(bodies) for bodies in rounds)
        per = ", ".join(
            f"{role} {seconds / total * 1e6:.0f} us" for role, seconds in spent.items() if seconds > 0
        )
        print(f"    CPU per registration ({connections} connections): {per}; "
              f"{sum(spent.values()) / wall:.2f} cores busy on average", flush=True)
        if preempted:  # (a shared core: PostgreSQL's backend takes it at each message)
            print(f"    the workers per registration: {queued / total * 1e6:.0f} us runnable "
                  f"without a core, preempted {preempted / total:.1f} times", flush=True)
    if split:  # the workers take connections in turn by count (attester/workers.py)
        print(f"    connections per worker (first round): {' / '.join(map(str, split))}", flush=True)
    return good / elapsed, bad


def _connections_per_worker(serve_pid: int, port: int, expected: int) -> list[int]:
    """The load generator's connections each worker holds, most first, once all are open
    (Linux /proc; empty elsewhere, with one worker (no such children), or if they did not
    all open within 5 s)."""
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not tables[0].exists():
        return []
    workers = [  # uvicorn's workers (multiprocessing's resource tracker is a child too)
        Path("/proc") / str(pid)
        for pid, fields, command in _processes()
        if int(fields[1]) == serve_pid and "spawn_main" in command
    ]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        inodes = {
            fields[9]
            for table in tables if table.exists()
            for fields in (line.split() for line in table.read_text().splitlines()[1:])
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port
        }
        counts = []
        for worker in workers:
            held = 0
            try:
                for fd in (worker / "fd").iterdir():
                    with suppress(OSError):
                        link = os.readlink(fd)
                        held += link.startswith("socket:[") and link[8:-1] in inodes
            except OSError:
                continue
            counts.append(held)
        if sum(counts) >= expected:
            return sorted(counts, reverse=True)
        time.sleep(0.05)
    return []


def _processes() -> Iterator[tuple[int, list[str], str]]:
    """Every process from /proc: its pid, the fields of its ``stat`` after the command name
    (the state first), its command line (none where there is no /proc)."""
    if not Path("/proc/self/stat").exists():
        return
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, IndexError):
            continue  # ended meanwhile
        yield int(entry.name), fields, command


def _children_cpu() -> float:
    """CPU seconds of this process's ended children (the load generator, once joined)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _scheduling(serve_pid: int) -> tuple[float, int]:
    """The serve process's and its workers' time so far runnable without a core (seconds)
    and their involuntary context switches, every thread's, from /proc (zeros elsewhere; a
    thread that ends between two readings takes its share with it)."""
    queued, preempted = 0.0, 0
    for pid, fields, _ in _processes():
        if serve_pid not in (pid, int(fields[1])):
            continue
        for task in Path(f"/proc/{pid}/task").glob("[0-9]*"):
            try:
                queued += int((task / "schedstat").read_text().split()[1]) / 1e9
                status = (task / "status").read_text()
            except (OSError, IndexError, ValueError):
                continue  # ended meanwhile, or no schedstat
            for line in status.splitlines():
                if line.startswith("nonvoluntary_ctxt_switches:"):
                    preempted += int(line.split()[1])
    return queued, preempted


def _cpu_by_role(serve_pid: int) -> dict[str, float]:
    """CPU seconds so far of the serve process and its workers, and of PostgreSQL's
    processes, from /proc (empty where there is no /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    commands: dict[int, str] = {}
    for pid, fields, command in _processes():
        commands[pid] = command.split("\0")[0]
        parents[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / tick

    def serves(pid: int) -> bool:
        while pid > 1:
            if pid == serve_pid:
                return True
            pid = parents.get(pid, 0)
        return False

    roles: dict[str, float] = {}
    for pid, seconds in cpu.items():
        role = "workers" if serves(pid) else None
        if role is None and "postgres" in commands[pid]:
            role = "database server"
        if role is not None:
            roles[role] = roles.get(role, 0.0) + seconds
    return roles


#: the load generator's connections: 8, and 32 (enough to keep both workers busy while each
#: request waits for its commit: a closed loop of 8 measures the latency as much as the rate)
REGISTER_CONNECTIONS = (8, 32)
#: each HTTP run is posted in rounds, the in-process measure (this many registrations) before
#: each round and after the last: a shared machine's speed changes within seconds, and measured
#: only before and after both runs, one row's ratio read 0.36-0.62 over a day's runs (README)
REGISTER_ROUNDS = 5
IN_PROCESS_EACH = 60


def section_register(count: int, postgres: bool) -> None:
    print("Android registrations over HTTP (2 workers) vs in-process verify+issue")
    backends: list[tuple[str, Callable[[], Any]]] = [("SQLite", lambda: _null())]
    if postgres:
        backends.append(("PostgreSQL", postgres_server))
    for name, context in backends:
        with context() as database_url:
            if name == "PostgreSQL" and database_url is None:
                print("    note: PostgreSQL binaries not found: skipped")
                continue
            with serving(database_url) as server:
                bodies = prepare_bodies(server, count * len(REGISTER_CONNECTIONS))
                sample = iter(prepare_bodies(server, (IN_PROCESS_EACH * (REGISTER_ROUNDS + 1) + 1)
                                             * len(REGISTER_CONNECTIONS)))
                for n, connections in enumerate(REGISTER_CONNECTIONS):
                    mine = bodies[n * count:(n + 1) * count]
                    size = -(-count // REGISTER_ROUNDS)
                    inproc = InProcess(server, next(sample))

                    def between(inproc: InProcess = inproc) -> None:
                        _quiet(server.pid)  # what a round left to do (a checkpoint) is not ours
                        inproc.run([next(sample) for _ in range(IN_PROCESS_EACH)])

                    rate, bad = http_register(
                        server, [mine[i:i + size] for i in range(0, count, size)], connections, between
                    )
                    inproc.close()
                    row(f"{name}: HTTP registrations ({connections} connections) / in-process",
                        f"{rate:.0f} / {inproc.rate():.0f} /s", f"{rate / inproc.rate():.2f}",
                        ok(rate / inproc.rate(), 0.6, at_most=False))
                    if bad:
                        print(f"    {bad} registrations were refused: the figure is not valid")


def _quiet(serve_pid: int, timeout: float = 2.0) -> None:
    """Wait (up to ``timeout``) until the server's processes, the database's included, use
    under a tenth of a core over 50 ms: after a round of HTTP load, PostgreSQL and the
    workers finish work of their own (a checkpoint, a collection) that would otherwise
    slow the in-process measure that follows."""
    deadline = time.monotonic() + timeout
    before = sum(_cpu_by_role(serve_pid).values())
    while time.monotonic() < deadline:
        time.sleep(0.05)
        after = sum(_cpu_by_role(serve_pid).values())
        if after - before < 0.005:
            return
        before = after


@contextmanager
def _null() -> Iterator[None]:
    yield None


# -- flat --------------------------------------------------------------------------
FILL_SQLITE = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count})
INSERT INTO instances (id, platform, client_id, key_thumbprint, instance_jwk, status, registered_at)
SELECT printf('fill-%031d', i), 'android', 'bench', printf('fill%039d', i), '{{}}', 'active',
       '2026-01-01 00:00:00.000000' FROM n
"""
FILL_SQLITE_ISSUED = """
INSERT INTO issued_attestations (jti, instance_id, kid, issued_at, expires_at)
SELECT 'j' || substr(id, 6), id, 'kid', registered_at, registered_at FROM instances WHERE substr(id, 1, 5) = 'fill-'
"""
FILL_PG = """
INSERT INTO instances (id, platform, client_id, key_thumbprint, instance_jwk, status, registered_at)
SELECT 'fill-' || lpad(i::text, 31, '0'), 'android', 'bench', 'fill' || lpad(i::text, 39, '0'),
       '{{}}', 'active', now() FROM generate_series(1, {count}) AS i
"""
FILL_PG_ISSUED = """
INSERT INTO issued_attestations (jti, instance_id, kid, issued_at, expires_at)
SELECT 'j' || substr(id, 6), id, 'kid', registered_at, registered_at FROM instances WHERE substr(id, 1, 5) = 'fill-'
"""


class FlatRig:
    """An in-process service on its own database, pre-filled with ``count`` instances."""

    def __init__(self, database_url: str | None, count: int, root: Any, status_url: str) -> None:
        from attester.app import create_app
        from attester.settings import load_settings

        self.work = Path(tempfile.mkdtemp(prefix="attester-flat-"))
        config = write_bench_config(
            self.work, issuer="http://bench", status_url=status_url, root=root,
            database_url=database_url,
        )
        settings = load_settings(config, data_dir=self.work / "data")
        self.service = create_app(settings).state.service
        self.platform = self.service.platforms["android"]
        self.root = root
        started = time.perf_counter()
        engine = self.service.store.engine
        with engine.begin() as connection:
            pg = engine.dialect.name == "postgresql"
            connection.exec_driver_sql((FILL_PG if pg else FILL_SQLITE).format(count=count))
            connection.exec_driver_sql(FILL_PG_ISSUED if pg else FILL_SQLITE_ISSUED)
        with engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE")
        self.fill_seconds = time.perf_counter() - started

    def registration(self) -> tuple[Callable[[], object], Any]:
        from attester.platforms.android import AndroidRegistration

        challenge = self.service.new_challenge()["challenge"]
        chain = make_chain(challenge=base64.urlsafe_b64decode(challenge + "="), root=self.root)
        body = AndroidRegistration(
            certificate_chain=[base64.b64encode(c).decode() for c in chain.chain],
            challenge=challenge,
            key_proof=key_proof(chain.leaf_key, challenge, "http://bench"),
        )
        service, platform = self.service, self.platform

        def run() -> object:
            return service.register(
                platform="android", challenge=body.challenge, key_proof=body.key_proof,
                verify=lambda c, now: platform.verify(body, c, now),
            )

        return run, chain.leaf_key

    def renewal(self, thumbprint: str, leaf_key: Any) -> Callable[[], object]:
        challenge = self.service.new_challenge()["challenge"]
        request = {"key_thumbprint": thumbprint, "challenge": challenge,
                   "key_proof": key_proof(leaf_key, challenge, "http://bench")}
        return lambda: self.service.renew(request)

    def plans(self) -> list[str]:
        engine = self.service.store.engine
        thumb = "fill" + "0" * 38 + "1"
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                sql = "EXPLAIN QUERY PLAN SELECT * FROM instances WHERE key_thumbprint = ?"
                return [str(r[-1]) for r in connection.exec_driver_sql(sql, (thumb,))]
            sql = "EXPLAIN SELECT * FROM instances WHERE key_thumbprint = %s"
            return [str(r[0]) for r in connection.exec_driver_sql(sql, (thumb,))]


def section_flat(big: int, operations: int, postgres: bool) -> None:
    print(f"registration and renewal latency with 1,000 vs {big:,} stored instances (in-process)")
    root = make_root()
    status = StatusServer()
    status.body = b'{"entries": {}}'
    backends: list[tuple[str, Callable[[], Any]]] = [("SQLite", lambda: _null())]
    if postgres:
        backends.append(("PostgreSQL", postgres_server))
    try:
        for name, context in backends:
            with context() as url:
                if name == "PostgreSQL" and url is None:
                    print("    note: PostgreSQL binaries not found: skipped")
                    continue
                small_url = big_url = url
                if url is not None:  # two databases on the one throw-away cluster
                    small_url, big_url = _pg_databases(url)
                small = FlatRig(small_url, 1000, root, status.url)
                large = FlatRig(big_url, big, root, status.url)
                print(f"    {name}: filled {big:,} instances (+ one issued JWT each) in {large.fill_seconds:.1f} s;"
                      f" plan: {' / '.join(large.plans())}")
                times: dict[str, list[float]] = {"reg_small": [], "reg_large": [], "ren_small": [], "ren_large": []}
                jobs = {"small": small, "large": large}
                prepared = {k: [rig.registration() for _ in range(operations)] for k, rig in jobs.items()}
                registered: dict[str, list[tuple[str, Any]]] = {"small": [], "large": []}
                for i in range(operations):  # alternate so both see the same machine load
                    for key in ("small", "large"):
                        run, leaf_key = prepared[key][i]
                        started = time.perf_counter()
                        result = run()
                        times[f"reg_{key}"].append(time.perf_counter() - started)
                        registered[key].append((result["key_thumbprint"], leaf_key))  # type: ignore[index]
                renewals = {k: [jobs[k].renewal(t, lk) for t, lk in registered[k]] for k in jobs}
                for i in range(operations):
                    for key in ("small", "large"):
                        started = time.perf_counter()
                        renewals[key][i]()
                        times[f"ren_{key}"].append(time.perf_counter() - started)
                med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
                for what, label in (("reg", "registration"), ("ren", "renewal")):
                    ratio = med[f"{what}_large"] / med[f"{what}_small"]
                    row(f"{name}: {label} latency, {big:,} vs 1k instances",
                        f"{med[f'{what}_large']:.2f} / {med[f'{what}_small']:.2f} ms", f"{ratio:.2f}",
                        ok(ratio, 1.2, at_most=True))
                small.service.store.dispose()
                large.service.store.dispose()
    finally:
        status.close()


def _pg_databases(url: str) -> tuple[str, str]:
    from sqlalchemy import create_engine

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        for name in ("flat_small", "flat_large"):
            connection.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    base = url.rsplit("/", 1)[0]
    return f"{base}/flat_small", f"{base}/flat_large"


# -- main --------------------------------------------------------------------------
SECTIONS = ("verify", "peer", "issue", "docs", "register", "flat")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short measurements (noisier)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--instances", type=int, default=1_000_000, help="stored instances for 'flat'")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args()
    seconds, rounds = (2.0, 4) if args.quick else (6.0, 6)
    count = 150 if args.quick else 2000
    operations = 30 if args.quick else 100
    big = min(args.instances, 200_000) if args.quick else args.instances
    postgres = not args.no_postgres

    print(f"bench_all on {os.cpu_count()} CPUs, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
          f"python {sys.version.split()[0]}")
    print(f"  {'measure':58} {'figure':>22} {'ratio':>8} {'target':>8}")
    if "verify" in args.only:
        section_verify(seconds, rounds)
    if "peer" in args.only:
        section_peer(seconds, rounds)
    if "issue" in args.only:
        section_issue(seconds, rounds)
    if "docs" in args.only:
        section_docs(seconds / 2 if args.quick else 5)
    if "register" in args.only:
        section_register(count, postgres)
    if "flat" in args.only:
        section_flat(big, operations, postgres)
    print("\nsummary (markdown)")
    print("| measure | figure | ratio | target |\n|---|---|---|---|")
    for measure, figure, ratio, target in ROWS:
        print(f"| {measure} | {figure} | {ratio} | {target} |")


if __name__ == "__main__":
    main()
