#!/usr/bin/env bash
# Issue 12's GPU check in one call of the device tool (the lent H200), prepared on the CPU first.
#
# Here, once (about a minute; both paths are git-ignored):
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl transformers==5.24.0
#   .venv/bin/python -c "from tests.support.tiny_smollm3 import build_tiny_smollm3; build_tiny_smollm3('build/tiny-smollm3')"
#   rm build/tiny-smollm3/model.safetensors   # only its config, tokenizer and chat template travel
# Then run, with the device tool: command "bash bench/gpu_device_run.sh", carry [".whl", "build/tiny-smollm3"],
# timeout_s 600. The H200's image has torch 2.11, transformers 5.17 (hence the wheel) and peft.
# What comes back: $OUT/gpu_engine.json (for bench/results/) and $OUT/gpu_engine.log.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
python3 -m bench.gpu_engine build/tiny-smollm3 /tmp/gpu_engine_work --also-write "$OUT/gpu_engine.json" 2>&1 \
    | tee "$OUT/gpu_engine.log"
