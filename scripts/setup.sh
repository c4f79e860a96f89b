#!/usr/bin/env bash
# Create .venv at the repo root with the pinned torch and the `dwf` command. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch and torchvision first and pinned: plain pip takes both from this machine's disk (about 90 s).
if ! .venv/bin/python -c "import torch, torchvision; assert torch.__version__.startswith('2.14.1')" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
fi
.venv/bin/python -m pip install --quiet -e ".[dev]"
echo "ready: $(.venv/bin/dwf --help >/dev/null && echo '.venv/bin/dwf')"
