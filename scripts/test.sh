#!/usr/bin/env bash
# Install glmft with its test dependencies into .venv and run the whole test suite.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
.venv/bin/pip install -q --disable-pip-version-check -e clients/python
# Integration tests talk to the real PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) this
# kind of machine runs; start them when they are installed but stopped.
if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi
if command -v redis-server >/dev/null && ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no || true
fi
# The dashboard's browser tests (tests/ui) drive Debian's Chromium through Playwright, never a
# browser Playwright downloads; the CJK font renders the Chinese demo data in the screenshots.
if ! command -v chromium >/dev/null; then
  apt-get update -qq && apt-get install -y -qq chromium fonts-wqy-microhei >/dev/null
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# DeepSpeed JIT-builds its CPU ops (shm comm, CPU Adam) on first use, about 3-5 min on 2 cores;
# torch caches them in ~/.cache/torch_extensions, so later runs on the machine skip the build.
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
