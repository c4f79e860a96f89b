# syntax=docker/dockerfile:1
# The dwf GPU worker: Celery consuming the `validate` and `train` queues, training with CUDA torch.
# Build from the repo root: docker build -f docker/worker.Dockerfile -t dwf-worker .
# The torch wheels bundle their CUDA libraries; the base image provides the CUDA runtime layout that the
# NVIDIA container toolkit expects. The host needs an NVIDIA driver new enough for CUDA_TAG.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

# PyTorch wheel index for the CUDA build (cu128 = CUDA 12.8); override with --build-arg CUDA_TAG=cu126 etc.
ARG CUDA_TAG=cu128
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates tini \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /app

# CUDA torch first, from the PyTorch index; `pip install .` below then finds torch==2.14.1 (+cuXXX) satisfied.
RUN pip install --index-url "https://download.pytorch.org/whl/${CUDA_TAG}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
    && python -c "import torch; assert torch.__version__.startswith('${TORCH_VERSION}'), torch.__version__; assert torch.version.cuda, 'CPU-only torch'"

COPY pyproject.toml ./
COPY dwf_core ./dwf_core
COPY dwf_service ./dwf_service
COPY api ./api
COPY worker ./worker
RUN pip install . \
    && python -c "import torch; assert torch.version.cuda, 'pip replaced the CUDA torch'" \
    && useradd --system --uid 10001 --home-dir /var/lib/dwf --create-home dwf

USER dwf
ENV DWF_DATA_DIR=/var/lib/dwf \
    DWF_DEVICE=cuda
# tini forwards SIGTERM to celery so `docker stop` gives a warm shutdown (the running job finishes or is
# re-queued), and reaps the prefork children.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["celery", "-A", "worker.celery_app", "worker", "-Q", "validate,train", "--concurrency", "1", "--prefetch-multiplier", "1", "--loglevel", "INFO"]
