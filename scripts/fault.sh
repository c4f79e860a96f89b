#!/usr/bin/env bash
# The fault tier T1–T11 of reliability-tests.md §6 (tests/fault): real redis-server, PostgreSQL 15, the API
# (uvicorn) and Celery workers, started, killed and restarted by tests/fault/harness.py (it signals only the
# process groups it started). Results: docs/reliability-fault.md. Takes several minutes on 2 cores.
#
#   bash scripts/fault.sh                 # the whole tier
#   bash scripts/fault.sh -k t4           # extra pytest arguments
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x "${DWF_TEST_PG_BIN:-/usr/lib/postgresql/15/bin}/initdb" ] || missing+=(postgresql-15)
source scripts/apt_missing.sh
apt_install_missing fault.sh exit ${missing[@]+"${missing[@]}"}

bash scripts/setup.sh
# CI=true: a missing server fails the tier instead of skipping it. -s: each test prints its job-state table.
CI=true exec .venv/bin/python -m pytest -q -s -m fault tests/fault "$@"
