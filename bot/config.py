"""Settings: config.toml plus environment variables, checked into typed values.

Every setting is declared once below with its default, its allowed values and
a one-line description; config.toml documents the same keys for humans. A bad
value raises ConfigError with one line that names the key and what is allowed,
so the CLI can print it instead of a traceback.

Environment variables override the file: BOT_<SECTION>_<KEY>, for example
BOT_MODEL_NAME=embedded or BOT_DATABASE_URL=sqlite+aiosqlite:///other.db.
Secrets (the Discord token) come from the environment only, never the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = Path("config.toml")
ENV_PREFIX = "BOT_"
# BOT_ variables the bot reads that are not settings: anything else named BOT_... must be a setting.
OTHER_ENV_VARIABLES = frozenset({"BOT_CONFIG", "BOT_MODEL_API_KEY", "BOT_CACHE_DIR"})
# The database drivers the bot runs on: async SQLAlchemy dialects it is tested with.
SUPPORTED_DATABASES = ("sqlite+aiosqlite", "postgresql+asyncpg")


class ConfigError(Exception):
    """A setting is missing, malformed or out of range. str() is one line for the user."""


def setting(default: Any, doc: str, *, choices: tuple | None = None,
            low: float | None = None, high: float | None = None) -> Any:
    """Declare one setting: its default, what it means, and what values it allows."""
    return field(default=default, metadata={"doc": doc, "choices": choices, "low": low, "high": high})


@dataclass(frozen=True)
class ModelSettings:
    name: str = setting("HuggingFaceTB/SmolLM3-3B",
                        'Hugging Face model id or local path; "embedded" is the built-in SmolLM2-135M-Instruct')
    dtype: str = setting("auto", "weights dtype; auto = bfloat16 on a GPU or a CPU with native bf16, else float32",
                         choices=("auto", "bfloat16", "float16", "float32"))
    device_map: str = setting("auto", 'where the weights go: "auto", "cpu", "cuda", "cuda:0", ...')
    thinking: bool = setting(False, "let SmolLM3 reason in <think> blocks (never stored or posted)")
    context_tokens: int = setting(0, "prompt + answer token limit; 0 = the model's own context length",
                                  low=0, high=1_000_000)
    generation_timeout: float = setting(120.0, "seconds one reply may take before it is abandoned",
                                        low=1, high=3600)
    backend: str = setting("local", 'who writes replies: "local" (this process, transformers) or "openai" '
                           "(an OpenAI-compatible server at base_url; API key from OPENAI_API_KEY or "
                           "BOT_MODEL_API_KEY)", choices=("local", "openai"))
    base_url: str = setting("", 'the server\'s API root for backend = "openai", e.g. "http://127.0.0.1:8000/v1"')
    server: str = setting("auto", 'which OpenAI-compatible server base_url is, for the fields it reads and how it '
                          'counts tokens; "auto" asks the server', choices=("auto", "vllm", "sglang", "llama.cpp",
                                                           "llama-cpp-python", "transformers", "ollama", "openai"))
    send_repetition_penalty: bool = setting(True, "send the repetition penalty to the server, under the name that "
                                            "server reads (none for `transformers serve`, which refuses it)")
    adapter: str = setting("", "a LoRA adapter folder (peft layout) used for every reply unless a server picks "
                           'another; "" = the base model')
    adapters_dir: str = setting("", "a folder whose subfolders are LoRA adapters that server admins may pick by "
                                'name with /persona adapter; "" = none')


@dataclass(frozen=True)
class EngineSettings:
    batching: bool = setting(True, "serve many channels at once with the batching engine "
                             "(false: one reply at a time, with transformers' own generate)")
    max_batch: int = setting(0, "replies written at the same time, each in a key/value slot of its own "
                             "(0: from the device, 64 on a GPU, 8 on a CPU)", low=0, high=1024)
    max_waiting: int = setting(64, "replies that may wait for a place; past this, users are told the bot is busy",
                               low=0, high=100_000)
    max_share: float = setting(0.5, "the share of the model's places one server (or one person's DMs) may hold "
                               "while others wait; waiting replies go in round-robin across servers",
                               low=0.01, high=1.0)
    slot_memory_mb: int = setting(0, "memory for the key/value slots of the replies being written, in MiB, allocated "
                                  "at start; their length becomes the context prompts are cut to (0: on a GPU, 80% "
                                  "of the memory free once the model is loaded, less cache_budget_mb; on a CPU, "
                                  "slots grow as replies need, up to the model's context)", low=0, high=10_000_000)
    cache_budget_mb: int = setting(1024, "memory for the channels' kept prompt caches (on the model's device), in MiB",
                                   low=0, high=1_000_000)
    prefill_chunk_tokens: int = setting(0, "prompt tokens run per engine round (several requests' together), so long "
                                        "prompts do not stall others (0: from the device, 2048 on a GPU, 256 on a CPU)",
                                        low=0, high=65_536)
    torch_threads: int = setting(0, "CPU threads for torch (0 = torch's default)", low=0, high=1024)
    attention: str = setting("auto", 'attention kernels the engine runs the model with: "auto" (eager on a GPU, '
                             "where PyTorch's SDPA with the padding mask of a batch is slow; the model's own "
                             'default elsewhere), "eager" or "sdpa"', choices=("auto", "eager", "sdpa"))
    cuda_graphs: bool = setting(True, "on a GPU, replay each decode step as a recorded CUDA graph (one launch "
                                "instead of hundreds of kernels); each graph is checked against the eager step "
                                "once, and graphs turn themselves off if one does not match. No effect on a CPU")


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = setting(200, "longest answer, in tokens", low=1, high=8192)
    temperature: float = setting(0.8, "sampling temperature", low=0.0, high=5.0)
    do_sample: bool = setting(True, "sample (true) or greedy decoding (false)")
    top_p: float = setting(0.9, "nucleus sampling mass", low=0.0, high=1.0)
    repetition_penalty: float = setting(1.1, "penalty for repeating tokens; 1.0 = none", low=0.5, high=3.0)
    max_thinking_tokens: int = setting(512, "tokens a reasoning model (SmolLM3 with thinking on) may spend thinking, "
                                       "on top of max_new_tokens; a local model's thought is closed at this limit, "
                                       "so it leaves the answer its room", low=0, high=32768)


@dataclass(frozen=True)
class HistorySettings:
    max_turns: int = setting(40, "most recent turns read from the database for a prompt", low=1, high=10_000)
    max_message_chars: int = setting(4000, "longest user message accepted, in characters", low=1, high=100_000)
    max_persona_chars: int = setting(4000, "longest persona accepted, in characters", low=1, high=100_000)
    recall_messages: int = setting(3, "older messages of the channel, beyond the prompt's turns, found by full-text "
                                   "search and shown with the newest message (0 = no recall)", low=0, high=20)
    recall_tokens: int = setting(300, "most tokens those recalled messages may take in the prompt (0 = no recall)",
                                 low=0, high=4000)


@dataclass(frozen=True)
class PersonaSettings:
    default: str = setting(
        "You are a friendly, helpful assistant chatting in a Discord server. "
        "Several people may talk to you; each user message starts with the speaker's name. "
        "Keep answers short and clear.",
        "system prompt used where a server has not set its own")


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = setting("sqlite+aiosqlite:///data/bot.db",
                       "SQLAlchemy async URL; a relative SQLite path is relative to the working directory")


@dataclass(frozen=True)
class DiscordSettings:
    dev_guild_id: int = setting(0, "sync slash commands to this one server instantly (0 = global sync)", low=0,
                                high=2**63 - 1)  # a Discord id (snowflake) fits 64 bits
    delete_data_on_guild_remove: bool = setting(True, "delete a server's history and settings when the bot is removed")
    stream_edit_interval: float = setting(1.0, "seconds between edits of an answer shown while it is written "
                                          "(0 = post only the finished answer)", low=0, high=60)
    stream_edits_per_second: float = setting(20.0, "edits (and first posts) of answers being written, all channels "
                                             "together, per second; Discord allows a bot 50 requests a second "
                                             "(with shard_ids, each process takes its shards' share)",
                                             low=0.1, high=50)
    shard_count: int = setting(0, "Discord shards in all, across every bot process (0 = one unsharded connection)",
                               low=0, high=65_535)
    shard_ids: str = setting("", 'the shards this process runs, comma-separated, e.g. "0,1" '
                             "(empty = all of them); needs shard_count")


@dataclass(frozen=True)
class LimitSettings:
    user_messages_per_minute: float = setting(6.0, "messages a minute one person may send the bot, on average "
                                              "(0 = no limit); past it they are told when to try again",
                                              low=0, high=100_000)
    user_burst: int = setting(4, "messages one person may send at once before the per-minute limit applies",
                              low=1, high=100_000)


@dataclass(frozen=True)
class MetricsSettings:
    enabled: bool = setting(False, "serve Prometheus metrics at http://HOST:PORT/metrics while the Discord bot runs")
    host: str = setting("127.0.0.1", 'address the metrics endpoint listens on ("0.0.0.0" = every interface)')
    port: int = setting(9108, "port of the metrics endpoint", low=1, high=65_535)


@dataclass(frozen=True)
class Settings:
    model: ModelSettings = field(default_factory=ModelSettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    history: HistorySettings = field(default_factory=HistorySettings)
    persona: PersonaSettings = field(default_factory=PersonaSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    discord: DiscordSettings = field(default_factory=DiscordSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    discord_token: str | None = field(default=None, repr=False)  # environment only

    def with_overrides(self, section: str, **values: Any) -> "Settings":
        """A copy with some keys of one section replaced (used by CLI flags and tests)."""
        current = getattr(self, section)
        return dataclasses.replace(self, **{section: dataclasses.replace(current, **values)})


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Settings)
                             if f.default_factory is not dataclasses.MISSING}


def load_settings(path: Path | str | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Read config.toml (if present) and the environment into checked Settings.

    The default config.toml may be absent (the defaults apply); a file named by `path` or
    BOT_CONFIG must exist."""
    environ = dict(os.environ if environ is None else environ)
    named = path or environ.get("BOT_CONFIG")
    path = Path(named or DEFAULT_CONFIG_PATH)
    if named and not path.is_file():
        raise ConfigError(f"The config file {path} does not exist." if not path.exists()
                          else f"The config file {path} is not a file.")
    raw = _read_toml(path) if path.exists() else {}
    if "discord" in raw and "token" in raw["discord"]:
        raise ConfigError(f"{path}: do not put the Discord token in the file; "
                          "set the DISCORD_TOKEN environment variable instead")
    if isinstance(raw.get("model"), dict) and "api_key" in raw["model"]:
        raise ConfigError(f"{path}: do not put the model server's API key in the file; "
                          "set the OPENAI_API_KEY (or BOT_MODEL_API_KEY) environment variable instead")
    _check_env_names(environ)
    sections = {}
    for name, cls in SECTIONS.items():
        table = raw.pop(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{name}] must be a table of settings")
        from_environment = _env_overrides(name, cls, environ)
        sections[name] = _build_section(path, name, cls, {**table, **from_environment}, set(from_environment))
    if raw:
        raise ConfigError(_unknown_top_level(path, next(iter(raw)), raw[next(iter(raw))]))
    if not sections["model"].name.strip():
        raise ConfigError(f'{path}: [model] name is empty: give a Hugging Face model id, a local model folder, '
                          'or "embedded"')
    check_database_url(sections["database"].url)
    check_model_places(sections["model"])
    token = (environ.get("DISCORD_TOKEN") or "").strip() or None
    return Settings(**sections, discord_token=token)


def _unknown_top_level(path: Path, name: str, value: Any) -> str:
    """A table that is no section, or a key written above every section header."""
    if isinstance(value, dict):
        return (f"{path}: unknown section [{name}]{_did_you_mean(name, SECTIONS)}; known sections: "
                + ", ".join(SECTIONS))
    homes = [section for section, cls in SECTIONS.items() if name in {f.name for f in dataclasses.fields(cls)}]
    where = f"; did you mean [{homes[0]}] {name}? (put it under that section's header)" if homes else ""
    return f"{path}: {name} is outside any section{where}; sections: " + ", ".join(SECTIONS)


def _did_you_mean(name: str, known, spell=lambda key: key) -> str:
    """'; did you mean X?' for the known name nearest to `name` (spelled by `spell`), or ''."""
    nearest = difflib.get_close_matches(name.lower(), [key.lower() for key in known], n=1, cutoff=0.6)
    if not nearest:
        return ""
    match = next(key for key in known if key.lower() == nearest[0])
    return f"; did you mean {spell(match)}?"


def _env_name(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section}_{key}".upper()


def _check_env_names(environ: dict[str, str]) -> None:
    """A BOT_ variable that names no setting is a typo that would be ignored silently: refuse it."""
    settings = {_env_name(section, f.name) for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in settings and name not in OTHER_ENV_VARIABLES:
            if name.endswith("TOKEN"):  # BOT_DISCORD_TOKEN, BOT_TOKEN: the token has a name of its own
                raise ConfigError(f"The environment variable {name} names no setting: the Discord token is read "
                                  "from DISCORD_TOKEN (or a .env file line DISCORD_TOKEN=...).")
            raise ConfigError(f"The environment variable {name} names no setting{_did_you_mean(name, sorted(settings))}"
                              " (settings are BOT_<SECTION>_<KEY>, as in config.toml)")


def mask_url_password(url: str) -> str:
    """The URL with the password of user:password@ replaced by ***, fit to print or log."""
    return re.sub(r"^([^:/@]+://[^:/@]*):.*@", r"\1:***@", url, flags=re.DOTALL)


# Where transformers can put the weights: its strategies, or a device (torch's names).
_DEVICE_MAP = re.compile(r"auto|balanced|balanced_low_0|sequential|cpu|mps|meta|(cuda|xpu|npu)(:\d+)?|\d+")


def check_model_places(model: "ModelSettings") -> None:
    """Refuse a base_url or device_map the model could not be reached at or put on, at start,
    with one line (else: a traceback at the first message, or while the model loads)."""
    url = model.base_url.strip()
    if url and not re.match(r"https?://[^/\s]", url, re.IGNORECASE):
        shown = mask_url_password(url)
        fix = f'; did you mean "http://{shown}"?' if "://" not in url else ""
        raise ConfigError(f"[model] base_url {shown!r} is not an http:// or https:// address{fix} "
                          '(e.g. "http://127.0.0.1:8000/v1")')
    if not _DEVICE_MAP.fullmatch(model.device_map.strip()):
        raise ConfigError(f'[model] device_map {model.device_map!r} is no place for the weights: use "auto", "cpu", '
                          '"cuda" or "cuda:N" (a GPU), or "mps" (Apple)')


def check_database_url(url: str) -> None:
    """Refuse a database URL the bot cannot use, with one line saying what to write instead."""
    shown = mask_url_password(url)
    scheme, separator, rest = url.partition("://")
    dialect, _, driver = scheme.lower().partition("+")
    supported = " or ".join(f"{name}://..." for name in SUPPORTED_DATABASES)
    if not separator or not dialect:
        raise ConfigError(f"[database] url {shown!r} is not a database URL; use {supported}")
    if scheme.lower() in SUPPORTED_DATABASES:
        if importlib.util.find_spec(driver) is None:  # aiosqlite and asyncpg are dependencies; a broken install
            raise ConfigError(f"[database] url {shown!r} needs the {driver} package, which is not installed: "
                              f"pip install {driver}")
        return
    if dialect == "sqlite":
        fix = "sqlite+aiosqlite://" + mask_url_password("x://" + rest)[len("x://"):]
        raise ConfigError(f"[database] url {shown!r} needs the async SQLite driver: use {fix}")
    if dialect in ("postgresql", "postgres"):
        fix = "postgresql+asyncpg://" + mask_url_password("x://" + rest)[len("x://"):]
        raise ConfigError(f"[database] url {shown!r} needs the async PostgreSQL driver: use {fix}")
    raise ConfigError(f"[database] url {shown!r} uses {scheme!r}, which the bot does not support; "
                      f"use {supported}")


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        hint = ' (text values need quotes, as in name = "embedded")' if "Invalid value" in str(error) else ""
        raise ConfigError(f"{path} is not valid TOML: {error}{hint}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path} cannot be read: {error}") from None


def _env_overrides(section: str, cls: type, environ: dict[str, str]) -> dict[str, str]:
    overrides = {}
    for f in dataclasses.fields(cls):
        key = _env_name(section, f.name)
        if key in environ:
            overrides[f.name] = environ[key]
    return overrides


def _build_section(path: Path, section: str, cls: type, table: dict, from_environment: set[str]) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"{path}: unknown key [{section}] {unknown[0]}{_did_you_mean(unknown[0], known)}; "
                          f"known keys: {', '.join(known)}")
    values = {name: _check_value(_label(section, name, name in from_environment), known[name], value)
              for name, value in table.items()}
    return cls(**values)


def _label(section: str, key: str, from_environment: bool) -> str:
    """How an error names a setting: as the user wrote it (an environment variable, or the file's key)."""
    return f"{_env_name(section, key)} (setting [{section}] {key})" if from_environment else f"[{section}] {key}"


def _check_value(label: str, f: dataclasses.Field, value: Any) -> Any:
    """Coerce (environment values arrive as strings) and range-check one value."""
    kind = {"str": str, "int": int, "float": float, "bool": bool}[f.type if isinstance(f.type, str) else f.type.__name__]
    meta = f.metadata
    value = _coerce(label, kind, value)
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(f"{label} must be one of {', '.join(map(repr, meta['choices']))} (got {value!r})")
    low, high = meta["low"], meta["high"]
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"from {low:g} to {high:g}" if high is not None else f"at least {low:g}"
        raise ConfigError(f"{label} must be {span} (got {value!r})")
    return value


def _coerce(label: str, kind: type, value: Any) -> Any:
    names = {str: "text", int: "a whole number", float: "a number", bool: "true or false"}
    if isinstance(value, str) and kind is not str:
        value = _parse_env_string(kind, value)
    ok = (isinstance(value, kind) and not (kind is int and isinstance(value, bool))) or (
        kind is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{label} must be {names[kind]} (got {value!r})")
    return float(value) if kind is float else value


def _parse_env_string(kind: type, text: str) -> Any:
    """Environment values are strings; read them as the setting's type, or leave them for the error."""
    lowered = text.strip().lower()
    if kind is bool:
        return {"true": True, "yes": True, "on": True, "1": True,
                "false": False, "no": False, "off": False, "0": False}.get(lowered, text)
    try:
        return kind(lowered)
    except ValueError:
        return text


def describe_settings() -> list[tuple[str, Any, str]]:
    """(key, default, description) for every setting: the source for config.toml's comments."""
    rows = []
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            rows.append((f"{section}.{f.name}", f.default, f.metadata["doc"]))
    return rows
