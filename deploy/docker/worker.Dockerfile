# syntax=docker/dockerfile:1
# The GPU image of glmft: a Celery training worker, which runs `torchrun ... -m trainer.finetune`
# as its subprocess. Build from the repository root:
#   docker build -f deploy/docker/worker.Dockerfile -t glmft/worker .
ARG CUDA_VERSION=12.8.1
ARG UBUNTU_VERSION=22.04

# ---- build: the venv with the CUDA torch and DeepSpeed, its ops compiled (needs nvcc) ----------
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0;10.0;12.0"
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The CUDA build of the pinned torch (pyproject.toml pins the version; the index picks the build).
RUN pip install --upgrade pip setuptools wheel ninja packaging \
 && pip install torch==2.13.0 --index-url ${TORCH_INDEX_URL}
# DeepSpeed is an sdist whose ops compile just in time, which needs nvcc; the runtime image has
# none, so build the fused Adam op here (configs/ds_zero_3.json's AdamW). Keep in step with the
# `deepspeed` extra of pyproject.toml.
RUN DS_BUILD_OPS=0 DS_BUILD_FUSED_ADAM=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST}" \
    pip install --no-build-isolation deepspeed==0.19.8

# ---- runtime ----------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION}
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# tini is PID 1: it forwards SIGTERM to Celery and reaps the trainer's orphaned processes.
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv tini \
 && apt-get purge -y software-properties-common gpg-agent \
 && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# The same uid/gid (1000) as the api image: both write the shared artifact volume.
RUN groupadd --gid 1000 glmft \
 && useradd --uid 1000 --gid glmft --create-home --shell /usr/sbin/nologin glmft \
 && mkdir -p /var/lib/glmft /data/artifacts /models \
 && chown glmft:glmft /var/lib/glmft /data/artifacts

WORKDIR /app
COPY pyproject.toml README.md ./
COPY trainer ./trainer
COPY serving ./serving
COPY core ./core
COPY worker ./worker
COPY configs ./configs
# torch and deepspeed are already in the venv at the pinned versions, so pip keeps them;
# tensorboardX (report_to: tensorboard) is small.
RUN pip install -e ".[deepspeed,tensorboard]"

USER glmft
ENV GLMFT_HOME=/var/lib/glmft \
    GLMFT_ARTIFACT_ROOT=/data/artifacts \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["celery", "-A", "worker", "worker", "-Q", "training", "--loglevel=INFO"]
