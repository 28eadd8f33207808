"""Language-model backends and the worker that runs them off the event loop.

Importing this package does not import torch: the transformers backend is loaded
on demand by `load_backend`, so the core and the tests of the flow stay light.
"""

from .worker import Backend, GenerationError, GenerationFailed, GenerationTimeout, ModelWorker

__all__ = ["Backend", "GenerationError", "GenerationFailed", "GenerationTimeout", "ModelWorker"]
