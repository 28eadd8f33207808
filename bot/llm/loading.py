"""Pick and load the configured model backend, wrapped in a ModelWorker."""

from __future__ import annotations

from ..config import Settings
from .worker import ModelWorker


def load_model(settings: Settings) -> ModelWorker:
    # Imported here so that commands which never load a model never import torch.
    from .transformers_backend import load_transformers_backend

    backend = load_transformers_backend(settings.model)
    return ModelWorker(backend, timeout_s=settings.model.generation_timeout)
