"""Each channel's keys/values kept after its reply, for its next turn.

PrefixCache: a channel's cache (prompt + answer tokens) kept after its reply, least
recently used out under a byte budget, so that the channel's next prompt (which starts
with the previous one) only prefills what is new: the kept keys/values are copied into
the request's slot (bot/llm/slots.py). Each entry records the LoRA adapter its keys/values
were computed with: they are reused only by a request that runs with the same adapter.

Tensors are [1, kv_heads, tokens, head_dim].
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable, Sequence

import torch

LayerKV = tuple[torch.Tensor, torch.Tensor]  # (keys, values) of one layer


def layers_nbytes(layers: Sequence[LayerKV]) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)


@dataclass
class KeptCache:
    token_ids: list[int]  # the tokens whose keys/values these are, in order
    layers: list[LayerKV]
    nbytes: int
    lora: str | None = None  # the adapter they were computed with (None: the base model)


class PrefixCache:
    """Each channel's last cache, least recently used evicted past `budget_bytes`.

    An entry is taken out while its channel generates (the row owns and extends it)
    and put back when the reply ends. Thread-safe, so that other threads can look."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[Hashable, KeptCache] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: Hashable) -> KeptCache | None:
        with self._lock:
            return self._entries.pop(key, None)

    def put(self, key: Hashable, token_ids: list[int], layers: list[LayerKV], lora: str | None = None) -> None:
        entry = KeptCache(list(token_ids), layers, layers_nbytes(layers), lora)
        with self._lock:
            self._entries.pop(key, None)
            if entry.nbytes > self.budget_bytes:
                return  # larger than the whole budget: keeping it would evict everyone for nothing
            self._entries[key] = entry
            while self._total() > self.budget_bytes:
                self._entries.popitem(last=False)

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def keys(self) -> list[Hashable]:
        """Least recently used first."""
        with self._lock:
            return list(self._entries)

    def _total(self) -> int:
        return sum(entry.nbytes for entry in self._entries.values())
