"""Wiring: settings -> database + model -> the conversation service."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from typing import Any

from .config import Settings, mask_url_password
from .llm.loading import load_model
from .llm.port import ChatModel
from .service import ChatService
from .store import Store

log = logging.getLogger(__name__)


@dataclass
class App:
    settings: Settings
    store: Store
    model: ChatModel
    service: ChatService
    metrics: Any = None  # bot.metrics.Metrics, serving, when [metrics] is on

    async def close(self) -> None:
        self.model.close()
        await self.store.close()
        if self.metrics is not None:
            self.metrics.close()


async def open_app(settings: Settings, model: ChatModel | None = None, *, serve_metrics: bool = False) -> App:
    """Upgrade and open the database, then load the model (once) off the event loop.

    With `serve_metrics` (the Discord bot) and [metrics] enabled, the Prometheus endpoint starts
    first, so that a port in use is reported at once, not after the model has loaded."""
    async with AsyncExitStack() as opened:  # closes what was opened if a later step fails
        metrics = None
        if serve_metrics and settings.metrics.enabled:
            from .metrics import serving_metrics  # prometheus_client is imported only when it is used
            metrics = serving_metrics(settings.metrics)
            opened.callback(metrics.close)
        store = await Store.open(settings.database.url)
        opened.push_async_callback(store.close)
        if store.schema_change is not None:  # which database, where: a first run makes one quietly
            log.info("Database %s %s.", mask_url_password(settings.database.url), store.schema_change.describe())
        if model is None:
            model = await _loaded_model(settings)
        opened.pop_all()
    return App(settings, store, model, ChatService(store, model, settings, observer=metrics), metrics)


async def _loaded_model(settings: Settings) -> ChatModel:
    """The model, loaded off the event loop. A load cannot be interrupted (a first start converts
    or downloads it): asked to stop meanwhile (Ctrl-C), the user hears that it stops once the load
    is done, instead of waiting in silence."""
    loading = asyncio.ensure_future(asyncio.to_thread(load_model, settings))
    try:
        return await asyncio.shield(loading)
    except asyncio.CancelledError:
        log.warning("Stopping once the model has finished loading (a load cannot be cut short)...")
        with suppress(Exception):
            await loading
        raise
