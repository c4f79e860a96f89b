#!/usr/bin/env bash
# Set up (if needed) and run the default test tier. CI calls exactly this (see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages of the integration tier (tests/integration: real Redis, PostgreSQL 15; tests/deploy:
# docker-compose 1.29 `config`; tests/e2e/test_dashboard.py: chromium). Installed with apt-get only when missing,
# so a prepared machine skips apt.
# Without root/apt the tests that need them skip locally and fail on CI (CI=true).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x "${DWF_TEST_PG_BIN:-/usr/lib/postgresql/15/bin}/initdb" ] || missing+=(postgresql-15)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
# tests/e2e/test_dashboard.py: Playwright drives this chromium (never `playwright install`)
[ -x /usr/bin/chromium ] || missing+=(chromium)
source scripts/apt_missing.sh
apt_install_missing test.sh warn ${missing[@]+"${missing[@]}"}

bash scripts/setup.sh
.venv/bin/ruff check dwf_core dwf_service dwf_client api worker tests benchmarks scripts
.venv/bin/ruff format --check .  # the code blocks in README.md and docs/ too
.venv/bin/mypy
# The fault tier (tests/fault: kills and restarts real processes, minutes long) runs via scripts/fault.sh only.
exec .venv/bin/python -m pytest -q -m "not fault" "$@"
