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
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "fault.sh: apt-get install ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "fault.sh: missing ${missing[*]} and cannot install them (needs root and apt-get)" >&2
    exit 1
  fi
fi

bash scripts/setup.sh
# CI=true: a missing server fails the tier instead of skipping it. -s: each test prints its job-state table.
CI=true exec .venv/bin/python -m pytest -q -s -m fault tests/fault "$@"
