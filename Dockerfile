# syntax=docker/dockerfile:1
# tabserve: TorchServe with the tabserve handler, for online serving and batch scoring.
#
# CPU (default):  docker build -t tabserve:cpu .
# GPU:            docker build -t tabserve:gpu \
#                   --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 \
#                   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 .
# Offline builds: put every wheel in docker/wheels/ and pass --build-arg PIP_NO_INDEX=1.
ARG BASE_IMAGE=debian:bookworm-slim

# --- build: a virtual environment with tabserve, torch and TorchServe ------------------------
FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_NO_INDEX=
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY docker/wheels/ /wheels/
COPY pyproject.toml constraints.txt README.md ./
COPY tabserve/ tabserve/
COPY train/ train/
COPY handler/ handler/
# torch comes from TORCH_INDEX_URL (the CPU or a CUDA build) or from /wheels; everything is
# pinned by constraints.txt.
RUN python3 -m venv /opt/tabserve \
 && /opt/tabserve/bin/pip install --find-links /wheels \
      ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -c constraints.txt . \
  && /opt/tabserve/bin/python -I -c "import torch, ts, tabserve.handler.entry"

# --- runtime ---------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# Java 17 for TorchServe's frontend; tini as PID 1 so SIGTERM reaches TorchServe at once.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 openjdk-17-jre-headless tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --create-home --home-dir /home/tabserve tabserve \
 && mkdir -p /app/model_store /app/run /data \
 && chown tabserve:tabserve /app/run /data
COPY --from=build /opt/tabserve /opt/tabserve
WORKDIR /app
COPY config.properties /app/config.properties
COPY docker/entrypoint.sh /app/entrypoint.sh
# Archives in model_store/ are baked in; mount another store at /app/model_store instead.
COPY model_store/ /app/model_store/
ENV PATH=/opt/tabserve/bin:$PATH \
    TABSERVE_CONFIG=/app/config.properties \
    TABSERVE_MODEL_STORE=/app/model_store \
    TABSERVE_RUN_DIR=/app/run \
    TABSERVE_HOST=0.0.0.0 \
    TABSERVE_PORT=8080 \
    PYTHONUNBUFFERED=1
USER 10001
# Inference and metrics. Model management has no port: it is a Unix socket inside the container.
EXPOSE 8080 8082
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD ["tabserve", "health"]
ENTRYPOINT ["/usr/bin/tini", "--", "/app/entrypoint.sh"]
CMD ["serve"]
