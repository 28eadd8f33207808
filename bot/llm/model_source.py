"""Where the configured model comes from, checked before the slow load: a local folder, the
Hugging Face cache, or the hub. A model that cannot be had fails in a second or two with
one line saying what to do, instead of a minute of download retries ending in a traceback.

No torch or transformers here: this runs before either is needed.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

HUB_HOST = "huggingface.co"
HUB_CHECK_TIMEOUT_S = 2.0
CHOICES = ('use the built-in model with --model embedded (or [model] name = "embedded"), '
           "give a local model folder, or connect this machine to the internet once to download it")


class ModelLoadError(Exception):
    """The model could not be loaded. str() tells the operator what to do."""


@dataclass(frozen=True)
class ModelSource:
    location: str  # a folder, or a hub id
    local_files_only: bool  # load from the cache without asking the hub (it cannot be reached)


def locate_model(name: str, *, environ: dict[str, str] | None = None) -> ModelSource:
    """Check the model `name` (a folder or a hub id) can be had, before loading it."""
    environ = os.environ if environ is None else environ
    if _looks_like_a_path(name):
        return ModelSource(str(_checked_folder(Path(name).expanduser())), local_files_only=True)
    cached = _in_hub_cache(name)
    if hub_offline(environ) or not hub_reachable():
        if not cached:
            raise ModelLoadError(f'The model "{name}" is not on this machine and the Hugging Face hub cannot be '
                                 f"reached, so it cannot be downloaded: {CHOICES}.")
        return ModelSource(name, local_files_only=True)
    if not cached:  # otherwise the first line after "Loading model" comes minutes later
        from huggingface_hub.constants import HF_HUB_CACHE

        log.info('The model "%s" is not on this machine yet: downloading it from the Hugging Face hub into %s '
                 "(a model of a few GB takes minutes; this happens once).", name, HF_HUB_CACHE)
    return ModelSource(name, local_files_only=False)


def _looks_like_a_path(name: str) -> bool:
    """A hub id is "owner/name"; anything that starts like a path, or exists here, is a folder."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or Path(name).expanduser().exists()


def _checked_folder(folder: Path) -> Path:
    if not folder.exists():
        raise ModelLoadError(f"The model folder {folder} does not exist: check the path, or use the built-in model "
                             'with --model embedded (or [model] name = "embedded"), or a Hugging Face hub id such '
                             "as HuggingFaceTB/SmolLM3-3B.")
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder} is not a model folder (it has no config.json): give the folder a model "
                             "was saved to (save_pretrained), or a Hugging Face hub id such as "
                             "HuggingFaceTB/SmolLM3-3B.")
    return folder


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache  # light, and only for hub ids

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id
        raise ModelLoadError(f'"{repo_id}" is neither a model folder on this machine nor a Hugging Face hub id '
                             '(such as "HuggingFaceTB/SmolLM3-3B").') from None
    return isinstance(found, str)


def hub_offline(environ) -> bool:
    return any(environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(host: str = HUB_HOST, port: int = 443, timeout_s: float = HUB_CHECK_TIMEOUT_S) -> bool:
    """Whether a connection to the hub opens within `timeout_s` (no request is sent)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False
