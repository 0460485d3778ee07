#!/usr/bin/env bash
# Install what the test suite needs on a fresh Debian machine, then run every test:
# unit, real device vectors, HTTP on loopback, PostgreSQL, and end-to-end against
# node-oidc-provider. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
# a PostgreSQL server for the storage tests (they start a throw-away cluster on loopback)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
fi
# SoftHSM2, the PKCS#11 token of the HSM signer tests (they create their own tokens in a temp dir)
if ! command -v softhsm2-util >/dev/null && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq softhsm2 >/dev/null
fi
# wrk, the loopback load generator of bench/bench_operations.py (not needed by the tests)
if ! command -v wrk >/dev/null && command -v apt-get >/dev/null; then
    apt-get install -y -qq wrk >/dev/null || true
fi
# node-oidc-provider, the real authorization server of the end-to-end tests
if [ -f tests/e2e/as/package-lock.json ] && [ ! -d tests/e2e/as/node_modules ]; then
    npm ci --prefix tests/e2e/as --no-audit --no-fund --loglevel=error
fi
python3 -m pip install --quiet --disable-pip-version-check -e ".[test]"

# every real server above must be usable: a test that cannot reach one fails instead of skipping
export ATTESTER_TESTS_REQUIRE_ALL=1
exec python3 -m pytest -q -rs "$@"
