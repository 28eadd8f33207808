"""Pick and load the configured model backend, and the way it is run (batching engine or worker)."""

from __future__ import annotations

from ..config import Settings
from .port import ChatModel
from .worker import ModelWorker


def load_model(settings: Settings) -> ChatModel:
    if settings.model.backend == "openai":
        # A server writes the replies: no torch, no engine here.
        from .remote_setup import load_openai_model
        return load_openai_model(settings.model)
    # Imported here so that commands which never load a model never import torch.
    from .decode_graphs import decode_graphs_for
    from .engine import BatchingEngine, default_max_batch, default_prefill_tokens
    from .transformers_backend import load_transformers_backend

    backend = load_transformers_backend(settings.model)
    engine = settings.engine
    if not engine.batching:
        return ModelWorker(backend, timeout_s=settings.model.generation_timeout, max_waiting=engine.max_waiting)
    device = backend.model.device.type
    return BatchingEngine(backend, timeout_s=settings.model.generation_timeout,
                          max_batch=engine.max_batch or default_max_batch(device),
                          max_waiting=engine.max_waiting, cache_budget_bytes=engine.cache_budget_mb << 20,
                          slot_memory_bytes=engine.slot_memory_mb << 20,
                          prefill_chunk_tokens=engine.prefill_chunk_tokens or default_prefill_tokens(device),
                          torch_threads=engine.torch_threads or None, attention=engine.attention,
                          graphs=decode_graphs_for(backend.model.device, engine.cuda_graphs))
