"""Setting up the remote backend: what the server is and says of itself (its kind, its
context length), the best token counting this machine allows, the API key, and the adapters
the server serves by name."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from ..config import ConfigError, ModelSettings
from . import embedded
from .adapters import Adapters, find_adapters
from .model_source import ModelLoadError
from .openai_backend import OpenAICompatibleModel, ServerReading
from .remote_counting import RemoteTokenCounter, ServerCounting
from .server_kind import ServerApi, ServerFacts, ServerKind, server_facts

log = logging.getLogger(__name__)

API_KEY_VARIABLES = ("BOT_MODEL_API_KEY", "OPENAI_API_KEY")
FALLBACK_CONTEXT_TOKENS = 4096  # when neither the setting, the server nor a local config says
LOADING_WAIT_S = 600.0  # how long a server still loading its model (HTTP 503) is waited for at start
LOADING_POLL_S = 2.0


def load_openai_model(settings: ModelSettings) -> OpenAICompatibleModel:
    """The remote model as configured, with the best token counting this machine allows."""
    if not settings.base_url:
        raise ConfigError('[model] backend = "openai" needs base_url, e.g. "http://127.0.0.1:8000/v1".')
    api_key = api_key_from_environment()
    api = ServerApi(settings.base_url, api_key)
    answers = wait_while_loading(api, settings.base_url)
    local_source = _local_model_source(settings.name)
    tokenizer = _local_tokenizer(local_source)
    reading = _read_server(api, settings, local_source, tokenizer)
    adapters = served_adapters(settings)
    _say_where_replies_come_from(settings, reading, adapters)
    model = OpenAICompatibleModel(settings.base_url, settings.name, reading.context_tokens, reading.counter,
                                  thinking=settings.thinking, timeout_s=settings.generation_timeout, api_key=api_key,
                                  send_repetition_penalty=settings.send_repetition_penalty, adapters=adapters,
                                  server=reading.kind, context_source=reading.context_source)
    if not answers:
        model.read_server_when_it_answers(
            lambda: _read_server_once_it_answers(api, settings, local_source, tokenizer, adapters))
    return model


def _read_server(api: ServerApi, settings: ModelSettings, local_source: str | Path, tokenizer) -> ServerReading:
    """What the server is and says of itself, and how prompts are counted for it; what it cannot
    be given is said."""
    facts = server_facts(api, settings.name, settings.server)
    context, source = _context_length(settings, facts.context_tokens, local_source)
    counter = RemoteTokenCounter(settings.thinking, tokenizer,
                                 ServerCounting.for_server(api, facts.kind, settings.name))
    _tell_what_is_lost(facts, settings)
    if not counter.exact:
        log.warning("Prompt token counts for %s are approximate (%s): the window is kept on the safe side.",
                    settings.name, counter.method)
    return ServerReading(facts.kind, context, source, counter)


def _read_server_once_it_answers(api: ServerApi, settings: ModelSettings, local_source: str | Path, tokenizer,
                                 adapters: Adapters) -> ServerReading | None:
    """The server read afresh, if it answers now (None while it cannot be reached or loads)."""
    if api.status("/v1/models") in (None, 503):
        return None
    log.info("The model server at %s answers now: reading what it is.", settings.base_url)
    reading = _read_server(api, settings, local_source, tokenizer)
    _say_where_replies_come_from(settings, reading, adapters)
    return reading


def _say_where_replies_come_from(settings: ModelSettings, reading: ServerReading, adapters: Adapters) -> None:
    log.info("Replies come from %s (%s server, model %s, %d tokens of context %s; prompt tokens %s%s).",
             settings.base_url, reading.kind.value, settings.name, reading.context_tokens, reading.context_source,
             reading.counter.method,
             f"; LoRA adapters: {', '.join(adapters.names) or 'none to pick'}, default {adapters.default or 'none'}"
             if adapters.any else "")


def wait_while_loading(api: ServerApi, base_url: str, wait_s: float = LOADING_WAIT_S) -> bool:
    """A server still loading its model answers 503 to everything (llama-server, Ollama), so what
    it is and its context would be read wrong: it is waited for, up to `wait_s`, with a line
    saying so. A refused API key stops the start with a sentence. A server that cannot be reached
    is not waited for (each reply says so, until it can). Whether the server answers: if not,
    it is read when it first does."""
    deadline = time.monotonic() + wait_s
    status = api.status("/v1/models")
    if status == 503:
        log.info("The model server at %s is still loading its model (HTTP 503): waiting for it, up to %.0f s.",
                 base_url, wait_s)
    while status == 503 and time.monotonic() < deadline:
        time.sleep(LOADING_POLL_S)
        status = api.status("/v1/models")
    if status in (401, 403):
        raise ModelLoadError(f"The model server at {base_url} refused the API key (HTTP {status}): set "
                             "OPENAI_API_KEY (or BOT_MODEL_API_KEY) to a key it accepts.")
    if status == 503:
        log.warning("The model server at %s was still loading after %.0f s: starting anyway; what it is and "
                    "its context length are guessed (see the next line) until it answers.", base_url, wait_s)
    if status is None:
        log.warning("The model server at %s cannot be reached: is it running, and is [model] base_url right? "
                    "Starting anyway: replies say so until it answers, and what it is and its context length "
                    "are guessed (see the next line) until then.", base_url)
    return status not in (None, 503)


def _context_length(settings: ModelSettings, served: int, local_source: str | Path) -> tuple[int, str]:
    """The context length and where it comes from (said in /status). The server's own limit
    first: it may serve less than the model's config allows (--max-model-len, --n_ctx)."""
    if settings.context_tokens:
        return settings.context_tokens, "as set in [model] context_tokens"
    if served:
        return served, "as the server reports"
    local = _local_context_length(local_source)
    if local:
        return local, "from the model's config: the server does not say; set [model] context_tokens to its real one"
    return FALLBACK_CONTEXT_TOKENS, "a guess: the server does not say; set [model] context_tokens"


def _tell_what_is_lost(facts: ServerFacts, settings: ModelSettings) -> None:
    """The operator hears at start about a setting the server cannot be given."""
    kind = facts.kind
    if kind.penalty_field is None and settings.send_repetition_penalty:
        log.warning("The %s server takes no repetition penalty: generation.repetition_penalty is not applied.",
                    kind.value)
    if settings.thinking and not kind.takes_template_arguments:
        log.warning("The %s server cannot be told to think (chat_template_kwargs): [model] thinking is not "
                    "applied; start the server with a chat template that thinks, if you want it.", kind.value)
    if kind is ServerKind.OLLAMA and not (settings.context_tokens or facts.context_tokens):
        log.warning("Ollama cuts a prompt longer than the context it runs a model with (its num_ctx, "
                    "OLLAMA_CONTEXT_LENGTH) without an error, and did not say what that is (its /api/ps "
                    "does in releases since July 2025): set [model] context_tokens to it, or older turns may be lost "
                    "without the note that says so.")
    if kind is ServerKind.OLLAMA and settings.context_tokens > facts.context_tokens > 0:
        log.warning("[model] context_tokens = %d is more than the %d tokens Ollama runs %s with: it cuts a "
                    "longer prompt without an error, so older turns may be lost without the note that says "
                    "so. Set context_tokens to %d or less, or give the model a larger num_ctx.",
                    settings.context_tokens, facts.context_tokens, settings.name, facts.context_tokens)


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


def _local_model_source(name: str) -> str | Path:
    if embedded.is_embedded(name):
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
