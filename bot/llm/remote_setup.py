"""Setting up the remote backend: what the server says of itself (its context length), the
best token counting this machine allows (the model's tokenizer where it is here), the API
key, and the adapters the server serves by name."""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from pathlib import Path

from ..config import ConfigError, ModelSettings
from . import embedded
from .adapters import Adapters, find_adapters
from .openai_backend import CHARS_PER_TOKEN_ESTIMATE, OpenAICompatibleModel, RemoteTokenCounter

log = logging.getLogger(__name__)

API_KEY_VARIABLES = ("BOT_MODEL_API_KEY", "OPENAI_API_KEY")
FALLBACK_CONTEXT_TOKENS = 4096  # when neither the setting, the server nor a local config says
SERVER_INFO_TIMEOUT_S = 5  # asking the server for its context length, once at start


def load_openai_model(settings: ModelSettings) -> OpenAICompatibleModel:
    """The remote model as configured, with the best token counting this machine allows."""
    if not settings.base_url:
        raise ConfigError('[model] backend = "openai" needs base_url, e.g. "http://127.0.0.1:8000/v1".')
    local_source = _local_model_source(settings.name)
    tokenizer = _local_tokenizer(local_source)
    api_key = api_key_from_environment()
    # The server's own limit first: it may serve less than the model's config allows (--max-model-len).
    context = (settings.context_tokens or server_context_length(settings.base_url, settings.name, api_key)
               or _local_context_length(local_source) or FALLBACK_CONTEXT_TOKENS)
    if tokenizer is None:
        log.warning("No local tokenizer for %s: the prompt token budget (%d tokens) is approximate "
                    "(about %d characters a token).", settings.name, context, CHARS_PER_TOKEN_ESTIMATE)
    counter = RemoteTokenCounter(settings.thinking, tokenizer)
    adapters = served_adapters(settings)
    log.info("Replies come from %s (model %s%s).", settings.base_url, settings.name,
             f"; LoRA adapters: {', '.join(adapters.names) or 'none to pick'}, default {adapters.default or 'none'}"
             if adapters.any else "")
    return OpenAICompatibleModel(settings.base_url, settings.name, context, counter, thinking=settings.thinking,
                                 timeout_s=settings.generation_timeout, api_key=api_key,
                                 send_repetition_penalty=settings.send_repetition_penalty, adapters=adapters)


def served_adapters(settings: ModelSettings) -> Adapters:
    """The adapters a remote server serves, by the model name each is sent as: the folder's name
    (vLLM: --lora-modules NAME=PATH with NAME the folder's name). The server has the weights; here,
    adapters_dir only says which names server admins may pick, so it is read (and checked) as for
    a local model, and [model] adapter need not exist on this machine."""
    names = tuple(sorted(find_adapters(Path(settings.adapters_dir)))) if settings.adapters_dir else ()
    default = Path(settings.adapter).name if settings.adapter else None
    return Adapters(default, names, default)


def api_key_from_environment(environ: dict[str, str] | None = None) -> str | None:
    environ = os.environ if environ is None else environ
    return next((environ[name].strip() for name in API_KEY_VARIABLES if environ.get(name, "").strip()), None)


def server_context_length(base_url: str, model_name: str, api_key: str | None = None) -> int:
    """The context length (prompt + answer tokens) the server reports for `model_name`; 0 if it
    reports none or cannot be asked. vLLM and SGLang: `max_model_len` of the model's entry in
    GET {base_url}/models. llama.cpp server: one slot's `n_ctx` in GET /props (its /models entry
    has `meta.n_ctx_train`, the length the model was trained for, which the server may not
    have allotted). `transformers serve` reports none."""
    listing = _get_json(f"{base_url.rstrip('/')}/models", api_key)
    entries = listing.get("data") if isinstance(listing, dict) else None
    entry = _model_entry(entries if isinstance(entries, list) else [], model_name)
    length = entry.get("max_model_len")
    if isinstance(length, int) and length > 0:
        log.info("The model server serves %s with a context of %d tokens.", model_name, length)
        return length
    if "meta" in entry:  # llama.cpp server
        props = _get_json(f"{_server_root(base_url)}/props", api_key)
        slot = props.get("default_generation_settings") if isinstance(props, dict) else None
        n_ctx = slot.get("n_ctx") if isinstance(slot, dict) else None
        if isinstance(n_ctx, int) and n_ctx > 0:
            log.info("The llama.cpp server gives each request a context of %d tokens.", n_ctx)
            return n_ctx
    return 0


def _model_entry(entries: list, model_name: str) -> dict:
    """The entry for the model the bot asks for; the only entry if none is named so (llama.cpp
    names its one model after the file)."""
    models = [entry for entry in entries if isinstance(entry, dict)]
    named = [entry for entry in models if entry.get("id") == model_name]
    return (named or (models if len(models) == 1 else [{}]))[0]


def _server_root(base_url: str) -> str:
    base_url = base_url.rstrip("/")
    return base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url


def _get_json(url: str, api_key: str | None) -> object:
    """GET a JSON document (at load time, off the event loop); None if that fails in any way."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=SERVER_INFO_TIMEOUT_S) as response:
            return json.loads(response.read())
    except (OSError, ValueError) as error:  # unreachable, HTTP error, timeout, not JSON
        log.debug("could not read %s: %s", url, error)
        return None


def _local_model_source(name: str) -> str | Path:
    if name == embedded.EMBEDDED_NAME:
        try:
            return embedded.converted_model_dir()
        except embedded.EmbeddedModelMissing:
            return name
    return name


def _local_tokenizer(source: str | Path):
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):
        return None


def _local_context_length(source: str | Path) -> int:
    from transformers import AutoConfig
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):
        return 0
    return int(getattr(config, "max_position_embeddings", 0) or 0)
