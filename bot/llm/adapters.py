"""LoRA adapters: which ones the operator configured, and which one a request runs with.

No torch here (the service and the remote backend use it too); the transformers backend
loads the weights (transformers_backend.load_adapters).

Names a server admin can pick (`/persona adapter`) are the subfolders of `[model] adapters_dir`
that hold an adapter, and two reserved words: "default" (back to `[model] adapter`, or the
base model where none is set) and "base" (the plain base model). Nothing else: an admin can
never make the bot read a path of their choosing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError, ModelSettings

DEFAULT = "default"  # the configured [model] adapter (or the base model where none is set)
BASE = "base"  # the plain base model, no adapter
RESERVED_NAMES = (DEFAULT, BASE)
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# Adapter names become peft module keys and Discord choices: no dots, no spaces, not too long.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


class AdapterProblem(ConfigError):
    """A configured adapter cannot be used. str() is one sentence for the operator."""


class UnknownAdapter(Exception):
    """A request named an adapter this model does not serve."""


@dataclass(frozen=True)
class Adapters:
    """The adapters a model serves, by the name a request uses.

    `default` is the name of the adapter used where a request asks for none (None: the base
    model); `names` are the ones server admins may pick. `label` names the default for people
    (its folder's name)."""

    default: str | None = None
    names: tuple[str, ...] = ()
    label: str | None = None

    @property
    def any(self) -> bool:
        return self.default is not None or bool(self.names)

    def choices(self) -> list[str]:
        """What an admin may type: the adapters by name, then the reserved words."""
        return [*self.names, DEFAULT, BASE] if self.any else []

    def resolve(self, choice: str | None) -> str | None:
        """The adapter a request runs with (None: the plain base model). `choice` None is the default."""
        if choice is None or choice == DEFAULT:
            return self.default
        if choice == BASE:
            return None
        if choice in self.names:
            return choice
        raise UnknownAdapter(choice)


NO_ADAPTERS = Adapters()


@dataclass(frozen=True)
class AdapterPlan:
    """What to load: each adapter's name and folder, the default first (if any)."""

    folders: dict[str, Path]
    adapters: Adapters


def plan_adapters(settings: ModelSettings) -> AdapterPlan:
    """The configured adapters, checked on disk. The default adapter is loaded under the name
    of its folder in adapters_dir when it is one of them (once), else under "default"."""
    choices = find_adapters(Path(settings.adapters_dir)) if settings.adapters_dir else {}
    folders = dict(choices)
    default = label = None
    if settings.adapter:
        path = Path(settings.adapter).expanduser()
        check_adapter_dir(path, "[model] adapter")
        label = path.name
        default = next((name for name, folder in choices.items() if _same(folder, path)), DEFAULT)
        folders = {default: path, **{n: f for n, f in choices.items() if n != default}}
    return AdapterPlan(folders, Adapters(default, tuple(sorted(choices)), label))


def find_adapters(adapters_dir: Path) -> dict[str, Path]:
    """The adapters in adapters_dir (subfolders with an adapter_config.json), checked, by name."""
    where = "[model] adapters_dir"
    if not adapters_dir.expanduser().is_dir():
        raise AdapterProblem(f'{where} "{adapters_dir}" is not a folder.')
    found = {}
    for folder in sorted(adapters_dir.expanduser().iterdir()):
        if not (folder / CONFIG_FILE).is_file():
            continue  # not an adapter (notes, hidden folders): not offered
        if folder.name in RESERVED_NAMES or not NAME_PATTERN.fullmatch(folder.name):
            raise AdapterProblem(f'{where}: the adapter folder "{folder.name}" needs another name: letters, digits, '
                                 f'"-" and "_" only (up to 64), and not "{DEFAULT}" or "{BASE}", which are reserved.')
        check_adapter_dir(folder, where)
        found[folder.name] = folder
    return found


def check_adapter_dir(path: Path, where: str) -> None:
    """A folder as peft's save_pretrained writes a LoRA adapter, or AdapterProblem saying what is wrong."""
    if not path.is_dir():
        raise AdapterProblem(f'{where}: "{path}" is not a folder; point it at a LoRA adapter folder '
                             f"(with {CONFIG_FILE} and {WEIGHTS_FILE}, as `python -m bot finetune --out DIR` writes).")
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise AdapterProblem(f'{where}: "{path}" has no readable {CONFIG_FILE}, so it is not a peft adapter '
                             f"({type(error).__name__}).") from None
    kind = config.get("peft_type") if isinstance(config, dict) else None
    if kind != "LORA":
        raise AdapterProblem(f'{where}: "{path}" is a {kind or "unknown"} adapter; only LoRA adapters are served.')
    if config.get("use_dora"):
        raise AdapterProblem(f'{where}: "{path}" is a DoRA adapter, which cannot share a batch with other '
                             "adapters; train a plain LoRA adapter (use_dora = false).")
    if not (path / WEIGHTS_FILE).is_file():
        raise AdapterProblem(f'{where}: "{path}" has no {WEIGHTS_FILE} (save the adapter with peft\'s '
                             "save_pretrained, which writes it).")


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False
