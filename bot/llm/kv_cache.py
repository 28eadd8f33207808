"""Key/value caches for the batching engine.

Two kinds live here:

- RunningBatch: the one cache shared by the rows decoding together. Rows have
  different lengths, so the cache is left-padded: row i's real tokens sit in
  the last `length - pads[i]` columns, and the padding columns are masked out
  of attention. A row joins by padding (its tensors or the batch's) along the
  sequence dimension and concatenating along the batch dimension; a row leaves
  by index selection, after which columns that are padding for every row are cut.

- PrefixCache: each channel's cache kept after its reply (prompt + answer
  tokens), least recently used out under a byte budget, so that the channel's
  next prompt (which starts with the previous one) only prefills what is new.
  Each entry records the LoRA adapter its keys/values were computed with: they are
  reused only by a request that runs with the same adapter.

Tensors are [batch, kv_heads, sequence, head_dim], as in transformers' DynamicLayer.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable, Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

LayerKV = tuple[torch.Tensor, torch.Tensor]  # (keys, values) of one layer


class UnsupportedCache(Exception):
    """The model's cache is not a plain full-attention DynamicCache (sliding windows, linear attention)."""


def new_cache(config) -> DynamicCache:
    """An empty cache for one sequence; refuses layer kinds whose tensors cannot be padded and spliced."""
    cache = DynamicCache(config=config)
    if any(type(layer) is not DynamicLayer for layer in cache.layers):
        kinds = sorted({type(layer).__name__ for layer in cache.layers})
        raise UnsupportedCache(f"the batching engine needs full-attention layers only (found {', '.join(kinds)})")
    return cache


def cache_from_layers(config, layers: Sequence[LayerKV]) -> DynamicCache:
    cache = new_cache(config)
    for layer, (keys, values) in zip(cache.layers, layers):
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
    return cache


def layers_of(cache: DynamicCache) -> list[LayerKV]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def layers_nbytes(layers: Sequence[LayerKV]) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)


def crop_to(cache: DynamicCache, keep: int) -> None:
    """Keep the first `keep` tokens. transformers 5 crop() takes the count to remove, as a negative number."""
    surplus = cache.get_seq_length() - keep
    if surplus > 0:
        cache.crop(-surplus)


def _left_pad(tensor: torch.Tensor, columns: int) -> torch.Tensor:
    if columns == 0:
        return tensor
    shape = list(tensor.shape)
    shape[2] = columns
    return torch.cat([tensor.new_zeros(shape), tensor], dim=2)


class RunningBatch:
    """The cache shared by the rows decoding together, and each row's left padding."""

    def __init__(self, config):
        self.config = config
        self.cache: DynamicCache | None = None
        self.pads: list[int] = []

    @property
    def size(self) -> int:
        return len(self.pads)

    @property
    def length(self) -> int:
        return self.cache.get_seq_length() if self.cache is not None else 0

    def add(self, row: DynamicCache) -> None:
        """Append one sequence's cache as the last row (its tensors must have batch size 1)."""
        row_length = row.get_seq_length()
        if self.cache is None or self.size == 0:
            self.cache, self.pads = row, [0]
            return
        gap = max(0, self.length - row_length)
        if row_length > self.length:  # the newcomer is longer: everyone else gets more padding
            self._pad_all(row_length - self.length)
        for layer, (keys, values) in zip(self.cache.layers, layers_of(row)):
            layer.keys = torch.cat([layer.keys, _left_pad(keys, gap)], dim=0)
            layer.values = torch.cat([layer.values, _left_pad(values, gap)], dim=0)
        self.pads.append(gap)

    def remove(self, indices: Sequence[int]) -> None:
        """Drop rows; then cut the leading columns that are padding for every row still here."""
        drop = set(indices)
        keep = [i for i in range(self.size) if i not in drop]
        if not keep:
            self.cache, self.pads = None, []
            return
        self.cache.batch_select_indices(torch.tensor(keep, device=self.cache.layers[0].keys.device))
        self.pads = [self.pads[i] for i in keep]
        shared_padding = min(self.pads)
        if shared_padding:
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, shared_padding:]
                layer.values = layer.values[:, :, shared_padding:]
            self.pads = [pad - shared_padding for pad in self.pads]

    def row_layers(self, index: int) -> list[LayerKV]:
        """One row's tensors without its padding, copied so the batch's big tensors can be freed."""
        pad = self.pads[index]
        return [(k[index:index + 1, :, pad:].clone(), v[index:index + 1, :, pad:].clone())
                for k, v in layers_of(self.cache)]

    def step_inputs(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention mask over cache + the one new token per row, and each row's next position."""
        length = self.length
        columns = torch.arange(length + 1, device=device)
        pads = torch.tensor(self.pads, device=device)
        attention_mask = (columns[None, :] >= pads[:, None]).long()
        position_ids = (length - pads)[:, None]
        return attention_mask, position_ids

    def _pad_all(self, columns: int) -> None:
        for layer in self.cache.layers:
            layer.keys = _left_pad(layer.keys, columns)
            layer.values = _left_pad(layer.values, columns)
        self.pads = [pad + columns for pad in self.pads]


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
