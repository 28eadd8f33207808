"""Language-model backends behind one port (bot/llm/port.py), and the ways they are run.

Importing this package does not import torch: the transformers backend is loaded on
demand by `loading.load_model`, so the core and the tests of the flow stay light.
"""

from .port import (Abilities, ChatModel, GenerationError, GenerationFailed, GenerationTimeout, ModelBusy, ModelKind,
                   ModelLoad)
from .worker import ModelWorker

__all__ = ["Abilities", "ChatModel", "GenerationError", "GenerationFailed", "GenerationTimeout", "ModelBusy",
           "ModelKind", "ModelLoad", "ModelWorker"]
