#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: environment, lint, types, tests.
# Extra arguments go to pytest (e.g. ./test.sh -k iceberg).
set -euo pipefail
cd "$(dirname "$0")"
./run.sh --setup test
# Real parts for the integration tests (Debian packages, installed only when missing):
# RabbitMQ for the AMQP gateway, PostgreSQL for the settlement store, Chromium for the web
# screens (driven by Playwright with executable_path; no browser is ever downloaded).
# The tests start their own throwaway broker, cluster and browser on loopback.
./run.sh --apt rabbitmq-server postgresql chromium fonts-dejavu-core
echo "== ruff"; .venv/bin/ruff check .
echo "== mypy (engine, risk)"; .venv/bin/mypy
echo "== pytest"; .venv/bin/python -m pytest -q "$@"
