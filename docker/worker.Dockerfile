# GPU worker: `latentforge worker --queues gpu,cpu`.
#
# Why python:3.12-slim + `pip install .[worker]` rather than a pytorch/pytorch
# CUDA image: the torch wheels on PyPI for Linux x86_64 are CUDA builds that
# carry their CUDA runtime, cuDNN and NCCL as nvidia-* wheels, so the container
# needs only the host's NVIDIA driver (through the NVIDIA Container Toolkit).
# The torch version then follows pyproject.toml's constraint instead of
# whatever the base image ships (pip would keep or replace it, with a second
# Python stack from conda), and API and worker run the same Python.
# The host driver must support the wheel's CUDA version; for an older driver
# build against a PyTorch index, e.g.
#   docker compose build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 worker
# The base is a build argument so a test (or an air-gapped site) can build on a local image that provides
# python3 and pip on PATH; production keeps python:3.12-slim.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg

# The same uid/gid as the API image, so the two agree on any volume an operator mounts into both.
RUN groupadd --system --gid 10001 latentforge \
 && useradd --system --uid 10001 --gid latentforge --create-home --home-dir /home/latentforge latentforge

WORKDIR /app
COPY pyproject.toml README.md ./
COPY api/ api/
COPY worker/ worker/
COPY shared/ shared/
COPY migrations/ migrations/
COPY latentforge/ latentforge/
RUN pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} ".[worker]" && rm -rf build *.egg-info

# Mount points owned by the app user (home: scratch, cache; data): an empty
# named volume takes this ownership the first time it is mounted.
RUN mkdir -p /var/lib/latentforge /data \
 && chown -R latentforge:latentforge /var/lib/latentforge /data

USER latentforge
CMD ["latentforge", "worker", "--queues", "gpu,cpu"]
