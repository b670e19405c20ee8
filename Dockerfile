# syntax=docker/dockerfile:1
# argus-embedder image: the daemon in a virtualenv on python:3.11-slim, run as a
# non-root user under tini.
#
#   docker build -t argus-embedder .                          # CPU torch (default)
#   docker build --build-arg TORCH_VARIANT=cuda -t argus-embedder:cuda .
#   docker run --gpus all -e ARGUS_DATABASE_URL=... -p 9478:9478 \
#       -v argus-model-cache:/var/cache/argus-embedder argus-embedder:cuda
#
# The CUDA variant takes torch's PyPI wheel, which bundles the CUDA runtime; the
# host needs only the NVIDIA driver and the container toolkit (--gpus).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# cpu: torch from PyTorch's CPU index (no CUDA libraries, ~5x smaller image);
# cuda: torch from PyPI. TORCH_VERSION matches constraints/cpu.txt.
ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/argus-embedder
ENV PATH=/opt/argus-embedder/bin:$PATH
# torch first, in its own layer: it is most of the image and changes least.
RUN case "${TORCH_VARIANT}" in \
      cpu) pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
             "torch==${TORCH_VERSION}" ;; \
      cuda) pip install --no-cache-dir "torch==${TORCH_VERSION}" ;; \
      *) echo "TORCH_VARIANT must be cpu or cuda, not ${TORCH_VARIANT}" >&2; exit 1 ;; \
    esac
WORKDIR /src
COPY pyproject.toml README.md ./
COPY constraints/ constraints/
COPY daemon/ daemon/
COPY sql/ sql/
# A regular (not editable) install: the image needs no source tree at run time.
RUN pip install --no-cache-dir --constraint constraints/cpu.txt . \
    && argus-embedder --help > /dev/null

FROM ${PYTHON_IMAGE} AS runtime
# tini as PID 1: forwards SIGTERM to the daemon and reaps any child it leaves.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-* \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 argus \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/argus argus \
    && install -d -o 10001 -g 10001 -m 0700 /var/cache/argus-embedder
COPY --from=build /opt/argus-embedder /opt/argus-embedder
ENV PATH=/opt/argus-embedder/bin:$PATH \
    HF_HOME=/var/cache/argus-embedder/huggingface \
    PYTHONUNBUFFERED=1 \
    ARGUS_METRICS_PORT=9478
# Model weights survive container re-creation in this volume.
VOLUME ["/var/cache/argus-embedder"]
USER 10001:10001
WORKDIR /home/argus
EXPOSE 9478
# Liveness only (the loop's heartbeat), no database dependency; python's urllib
# so the image needs no curl. A 503 or a refused connection exits non-zero.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('ARGUS_METRICS_PORT', '9478') + '/livez', timeout=4)"]
# SIGTERM starts the drain: stop claiming, finish or release the current batch,
# give the lease back, exit 0. Docker's default grace is 10 s, shorter than a
# drain: give `docker stop -t 120` (compose: stop_grace_period: 120s), longer
# than the slowest batch, or the kill lands mid-batch and the lease has to expire.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--", "argus-embedder"]
CMD ["run"]
