#!/usr/bin/env bash
# Run the whole test suite (unit, real vectors, HTTP, PostgreSQL, end-to-end).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 -m pytest -q -rs "$@"
