#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: environment, lint, types, tests.
# Extra arguments go to pytest (e.g. ./test.sh -k iceberg).
set -euo pipefail
cd "$(dirname "$0")"
./run.sh --setup test
echo "== ruff"; .venv/bin/ruff check .
echo "== mypy (engine, risk)"; .venv/bin/mypy
echo "== pytest"; .venv/bin/python -m pytest -q "$@"
