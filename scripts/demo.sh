#!/usr/bin/env bash
# glmft's main job on embedded defaults, through the service: install, start the API and a worker
# (SQLite, embedded broker, a tiny GLM-4 built offline), upload the bundled dataset, fine-tune it
# with LoRA, follow the job live, get its checkpoints and adapter, and chat with it. A few
# minutes on 2 CPU cores, offline. `glmft demo` runs the same training without the service.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/pip install -q --disable-pip-version-check -e .
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/glmft quickstart "$@"
