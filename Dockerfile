# syntax=docker/dockerfile:1.7
#
# One source tree, two images:
#
#   docker build --target api    -t ftaas-api:0.1.0 .     # FastAPI server, no torch
#   docker build --target worker -t ftaas-worker:0.1.0 .  # rq training worker, CUDA torch
#
# Base images are pinned by exact tag. To pin them by digest as well, pass e.g.
#   --build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:<digest>
# Nothing secret is baked in: database URLs, S3 credentials and hub tokens come from the
# environment at run time (a Kubernetes Secret, see k8s/).

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG PYTORCH_IMAGE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime

# ---------------------------------------------------------------------------------------------
# source: the four distributions (SDK, core, API, worker), shared by both targets.
FROM scratch AS source
COPY client/ /src/client/
COPY core/ /src/core/
COPY api/ /src/api/
COPY trainer_worker/ /src/trainer_worker/

# ---------------------------------------------------------------------------------------------
# api-build: a virtualenv holding the SDK, the core and the API. It never sees torch: the API
# enqueues training by dotted name, so nothing it imports needs the training stack.
FROM ${PYTHON_IMAGE} AS api-build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/ftaas
COPY --from=source /src /tmp/src
WORKDIR /tmp/src
RUN /opt/ftaas/bin/pip install "pip==24.3.1" \
 && /opt/ftaas/bin/pip install ./client ./core ./api \
 && /opt/ftaas/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)" \
 && /opt/ftaas/bin/ftaas --help > /dev/null

# ---------------------------------------------------------------------------------------------
# api: the HTTP server. Runs DB migrations at start-up (advisory-locked, safe with replicas).
FROM ${PYTHON_IMAGE} AS api
LABEL org.opencontainers.image.title="ftaas-api" \
      org.opencontainers.image.description="ftaas API server (OpenAI-compatible fine-tuning)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/ftaas/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FTAAS_DATA_DIR=/var/lib/ftaas \
    HF_HOME=/cache/huggingface
RUN groupadd --system --gid 10001 ftaas \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/ftaas --create-home \
        --shell /usr/sbin/nologin ftaas \
 && mkdir -p /var/lib/ftaas /cache \
 && chown 10001:10001 /var/lib/ftaas /cache
COPY --from=api-build /opt/ftaas /opt/ftaas
WORKDIR /var/lib/ftaas
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["ftaas"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------------------------------------
# worker: one training worker per GPU. The base image's CUDA build of torch is kept: pip is
# constrained to the exact torch version already installed, so the worker's own torch
# requirement cannot replace it. The build then checks that torch is still that one and that
# the training recipe imports with it, so an image that could not train is never pushed.
FROM ${PYTORCH_IMAGE} AS worker
LABEL org.opencontainers.image.title="ftaas-worker" \
      org.opencontainers.image.description="ftaas training worker (LoRA on CUDA)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FTAAS_DATA_DIR=/var/lib/ftaas \
    HF_HOME=/cache/huggingface \
    XDG_CACHE_HOME=/cache \
    TRITON_CACHE_DIR=/cache/triton
COPY --from=source /src /tmp/src
WORKDIR /tmp/src
RUN python -c "import sys; assert sys.version_info >= (3, 11), sys.version" \
 && python -m pip list --format=freeze | grep -i '^torch==' > /tmp/keep-torch.txt \
 && test -s /tmp/keep-torch.txt \
 && python -m pip install --constraint /tmp/keep-torch.txt ./client ./core ./trainer_worker \
 && python -m pip list --format=freeze | grep -i '^torch==' | diff - /tmp/keep-torch.txt \
 && python -c "import torch, transformers, peft, ftaas_worker.worker, ftaas_worker.recipe" \
 && rm -rf /tmp/src /tmp/keep-torch.txt
RUN groupadd --system --gid 10001 ftaas \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/ftaas --create-home \
        --shell /usr/sbin/nologin ftaas \
 && mkdir -p /var/lib/ftaas /cache \
 && chown 10001:10001 /var/lib/ftaas /cache
WORKDIR /var/lib/ftaas
USER 10001:10001
# `ftaas` is PID 1 (exec form, no shell in between): Kubernetes' SIGTERM reaches the rq worker,
# whose training process then saves a checkpoint and requeues its job before exiting; during
# start-up, before rq takes the signal, it exits at once.
STOPSIGNAL SIGTERM
ENTRYPOINT ["ftaas"]
CMD ["worker"]
