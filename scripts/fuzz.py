"""Run the fuzz targets of tests/fuzz for a long time and print inputs/s and failures.

    PYTHONPATH=$PWD python3 scripts/fuzz.py [--inputs 1000000] [--processes 2]
        [--target NAME]... [--chunk 2000] [--engine random|hypothesis] [--seed N]

The same targets and property as the test suite (tests/fuzz/test_fuzz.py): every input
either verifies or raises the project's own error type. Inputs are shared equally among
the targets and run in chunks of ``--chunk``. The default engine draws the suite's
inputs (genuine evidence with random edits, random bytes, JWS-shaped tokens) with
``random``, seeded per chunk, which is several times faster than hypothesis per input;
``--engine hypothesis`` runs the suite's strategies themselves (fresh seed per chunk, so
its bookkeeping stays small). Any other exception is recorded (target, type, message, a
repr of the input) and printed at once, and the run goes on.
Exit status 0 when there was no failure, 1 otherwise.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import sys
import time
import traceback
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings


def _record(failures: list[dict[str, str]], name: str, exc: Exception, value: Any) -> None:
    if len(failures) < 20:
        failures.append(
            {
                "target": name,
                "error": f"{type(exc).__name__}: {exc}"[:300],
                "where": traceback.format_exc(limit=-3)[-600:],
                "input": repr(value)[:400],
            }
        )


def _run_chunk_random(job: tuple[str, int, str, int]) -> tuple[str, int, list[dict[str, str]]]:
    """Run ``count`` inputs drawn with ``random`` (seeded per chunk, so reproducible)."""
    import random

    from tests.fuzz.targets import TARGETS, random_input

    name, count, _, seed = job
    target = TARGETS[name][0]
    rng = random.Random(seed)
    failures: list[dict[str, str]] = []
    for _ in range(count):
        value = random_input(name, rng)
        try:
            target(value)
        except Exception as exc:  # noqa: BLE001 - any escape is the failure we look for
            _record(failures, name, exc, value)
    return name, count, failures


def _run_chunk(job: tuple[str, int, str, int]) -> tuple[str, int, list[dict[str, str]]]:
    """Run ``count`` examples of one target; return (name, inputs, failures)."""
    if job[2] == "random":
        return _run_chunk_random(job)
    from tests.fuzz.targets import TARGETS, seeds

    name, count, _, _ = job
    target, strategy = TARGETS[name]
    seeds()
    inputs = 0
    failures: list[dict[str, str]] = []

    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # no shrinking: failures are recorded, not raised
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy())
    def run(value: Any) -> None:
        nonlocal inputs
        inputs += 1
        try:
            target(value)
        except Exception as exc:  # noqa: BLE001 - any escape is the failure we look for
            _record(failures, name, exc, value)

    run()
    return name, inputs, failures


def main(argv: list[str] | None = None) -> int:
    from tests.fuzz.targets import TARGETS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=1_000_000, help="total inputs (all targets)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=2000, help="examples per hypothesis run")
    parser.add_argument("--target", action="append", choices=sorted(TARGETS))
    parser.add_argument(
        "--engine",
        choices=("random", "hypothesis"),
        default="random",
        help="random: the suite's inputs drawn directly (fast); hypothesis: its strategies",
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed of the random engine")
    args = parser.parse_args(argv)

    names = args.target or sorted(TARGETS)
    per_target = -(-args.inputs // len(names))
    queues = []
    for name in names:
        sizes = [args.chunk] * (per_target // args.chunk)
        if per_target % args.chunk:
            sizes.append(per_target % args.chunk)
        queues.append(
            [(name, size, args.engine, args.seed * 1_000_003 + i) for i, size in enumerate(sizes)]
        )
    # Interleave the targets so that a partial run still covers all of them.
    jobs = [job for group in itertools.zip_longest(*queues) for job in group if job]
    print(f"fuzz: engine {args.engine}, {len(names)} targets, {len(jobs)} chunks", flush=True)

    totals = {name: 0 for name in names}
    seconds = {name: 0.0 for name in names}
    failures: list[dict[str, str]] = []
    started = time.monotonic()
    with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
        last = started
        for name, inputs, (found, elapsed) in pool.imap_unordered(_run_chunk_timed, jobs):
            totals[name] += inputs
            seconds[name] += elapsed
            failures.extend(found)
            for failure in found:  # as they come: a long run may be cut short
                print(f"  FAILURE [{failure['target']}] {failure['error']}", flush=True)
            now = time.monotonic()
            if now - last > 30:
                done = sum(totals.values())
                print(
                    f"  ... {done} inputs, {done / (now - started):.0f} inputs/s, "
                    f"{len(failures)} failures",
                    flush=True,
                )
                last = now
    wall = time.monotonic() - started
    total = sum(totals.values())
    print(f"fuzz: {total} inputs in {wall:.1f} s wall, {args.processes} processes")
    for name in names:
        rate = totals[name] / seconds[name] if seconds[name] else 0.0
        print(f"  {name:18} {totals[name]:>9} inputs  {rate:8.0f} inputs/s per process")
    print(f"  overall {total / wall:.0f} inputs/s")
    print(f"failures: {len(failures)}")
    for failure in failures:
        print(f"  [{failure['target']}] {failure['error']}\n    input: {failure['input']}")
        print("    " + failure["where"].replace("\n", "\n    "))
    return 1 if failures else 0


def _run_chunk_timed(
    job: tuple[str, int, str, int],
) -> tuple[str, int, tuple[list[dict[str, str]], float]]:
    started = time.monotonic()
    name, inputs, failures = _run_chunk(job)
    return name, inputs, (failures, time.monotonic() - started)


if __name__ == "__main__":
    sys.exit(main())
