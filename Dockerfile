# syntax=docker/dockerfile:1
# GPU image: CUDA 12.8 runtime + cuDNN 9, torch 2.9.1 (its PyPI wheels are built for CUDA 12.8),
# qwen-asr 0.0.6 (transformers 4.57.6), onnxruntime-gpu 1.23 (CUDA 12 / cuDNN 9 build) for the VAD and
# the ONNX encoder, for ENGINE=transformers. ENGINE=vllm (the default: vLLM's continuous batching is the GPU's
# fastest path) installs the CUDA vLLM with scripts/install_vllm_env.sh, the same script `make install-vllm` and
# CI run; vLLM brings its own torch and transformers 5, so qwen-asr is not in that image.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ARG ENGINE=vllm
ARG EXTRAS=asr,gpu-vad
ARG TORCH_VERSION=2.9.1
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
COPY scripts/install_vllm_env.sh scripts/torchvision_ops_schema.py ./scripts/
# The project itself is the local source tree; its dependencies carry their own version ranges. For the
# transformers engine torch comes first and pinned, so resolving the project never swaps it for another build.
# hadolint ignore=DL3013
RUN if [ "${ENGINE}" = vllm ]; then \
        ASR_INSTALL_EDITABLE=0 ASR_INSTALL_TEST_EXTRA='' scripts/install_vllm_env.sh /opt/venv vllm; \
    else \
        pip install "torch==${TORCH_VERSION}" && pip install ".[${EXTRAS}]" "torch==${TORCH_VERSION}"; \
    fi

FROM ${CUDA_IMAGE} AS runtime
ARG ENGINE=vllm
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 curl libsndfile1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 asr \
    && mkdir -p /models \
    && chown asr:asr /models
COPY --from=build /opt/venv /opt/venv
# HF_HOME: downloaded weights live on the /models volume and survive container restarts.
# MALLOC_ARENA_MAX=2: decoding threads would each grow a malloc arena that keeps freed memory resident.
ENV PATH=/opt/venv/bin:$PATH \
    ASR_ENGINE=${ENGINE} \
    HF_HOME=/models \
    MALLOC_ARENA_MAX=2 \
    HOST=0.0.0.0 \
    PORT=8000 \
    PYTHONUNBUFFERED=1
VOLUME ["/models"]
USER 10001
WORKDIR /home/asr
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["sh", "-c", "curl -fsS http://127.0.0.1:${PORT}/health || exit 1"]
CMD ["asr-server", "serve"]
