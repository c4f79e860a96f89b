#!/usr/bin/env bash
# Set up (if needed) and run the default test tier. CI calls exactly this (see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check dwf_core tests benchmarks
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
