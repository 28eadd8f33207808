"""Wiring: settings -> database + model -> the conversation service."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from .config import Settings
from .llm.loading import load_model
from .llm.worker import ModelFront
from .service import ChatService
from .store import Store

log = logging.getLogger(__name__)


@dataclass
class App:
    settings: Settings
    store: Store
    model: ModelFront
    service: ChatService

    async def close(self) -> None:
        self.model.close()
        await self.store.close()


async def open_app(settings: Settings, model: ModelFront | None = None) -> App:
    """Upgrade and open the database, then load the model (once) off the event loop."""
    store = await Store.open(settings.database.url)
    try:
        if model is None:
            model = await asyncio.to_thread(load_model, settings)
    except BaseException:
        await store.close()
        raise
    return App(settings, store, model, ChatService(store, model, settings))
