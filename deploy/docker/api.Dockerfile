# syntax=docker/dockerfile:1
# The CPU image of glmft: the API (uvicorn), the migrations (`python -m core.migrate`) and the
# reaper's scheduler (`celery -A worker beat`). Build from the repository root:
#   docker build -f deploy/docker/api.Dockerfile -t glmft/api .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed uid/gid (1000) shared with the worker image, so both can write the shared artifact volume.
RUN groupadd --gid 1000 glmft \
 && useradd --uid 1000 --gid glmft --create-home --shell /usr/sbin/nologin glmft \
 && mkdir -p /var/lib/glmft /data/artifacts /models \
 && chown glmft:glmft /var/lib/glmft /data/artifacts

# The CPU build of the pinned torch (PyPI's Linux wheel would pull the multi-GB CUDA stack).
# Its own layer, so code changes do not re-download it. Keep in step with pyproject.toml.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY pyproject.toml README.md ./
COPY trainer ./trainer
COPY serving ./serving
COPY core ./core
COPY api ./api
COPY worker ./worker
COPY configs ./configs
# Editable, so the code runs from /app and finds /app/configs (the shipped presets).
RUN pip install -e .

USER glmft
ENV GLMFT_HOME=/var/lib/glmft \
    GLMFT_ARTIFACT_ROOT=/data/artifacts \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
EXPOSE 8000
# WEB_CONCURRENCY (uvicorn's default for --workers) sets the worker processes: one per core
CMD ["uvicorn", "--factory", "api.main:create_app", "--host", "0.0.0.0", "--port", "8000", \
     "--loop", "uvloop", "--http", "httptools"]
