"""The batching engine's key/value cache: one fixed slot per row, allocated once.

Every layer holds keys and values as [slots, kv_heads, columns, head_dim]. A request takes
a free slot for its whole life (prefill, then decode) and gives it back when it ends;
nothing is concatenated, padded or copied when rows join or leave. A decode step runs
the slots [0, top) together, top being one past the highest slot in use (free slots are
taken lowest first, so that range stays tight).

Column 0 of every slot is scratch: a slot that is in the range but not decoding (free, or
still being prefilled) writes its step's throwaway key there and attends to it alone, so
its output is finite and its real columns are untouched. A slot's token at position p
lives in column p + 1. The attention mask of a step is made by two comparisons against
the slots' lengths (a tensor on the device), never rebuilt row by row in Python.

The object is handed to the model as its `cache`: transformers' attention layers call
`update(keys, values, layer_idx)` with the new tokens' keys/values and attend to what it
returns, and a 4D mask passed by the caller is used as it is (masking_utils).
"""

from __future__ import annotations

from typing import Sequence

import torch

LayerKV = tuple[torch.Tensor, torch.Tensor]  # (keys, values) of one layer, [1, kv_heads, tokens, head_dim]

FIRST_COLUMNS = 256  # columns a slot starts with; doubled (one copy) when a row needs more


class UnsupportedModel(Exception):
    """The model is not a plain full-attention transformer (sliding windows, linear attention)."""


def kv_shape(config) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of a decoder config; refuses layer kinds slots cannot hold."""
    kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
    if getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None):
        kinds.add("sliding_attention")
    if kinds != {"full_attention"}:
        raise UnsupportedModel(f"the batching engine needs full-attention layers only (found {', '.join(sorted(kinds))})")
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, getattr(config, "num_key_value_heads", None) or heads, head_dim


def column_bytes(config, dtype: torch.dtype) -> int:
    """Bytes one token's keys and values take in a slot (every layer)."""
    layers, kv_heads, head_dim = kv_shape(config)
    return 2 * layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


class SlotCache:
    def __init__(self, config, slots: int, max_tokens: int, device, dtype: torch.dtype, *, at_once: bool = False):
        """`max_tokens` per slot; `at_once`: every slot's columns allocated now (a memory budget
        sized them), else from FIRST_COLUMNS, doubled as rows need."""
        self.layers, self.kv_heads, self.head_dim = kv_shape(config)
        self.slots = slots
        self.max_columns = max_tokens + 1  # the scratch column and the longest row
        self.device, self.dtype = torch.device(device), dtype
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.allocation = 0  # counts the buffers' (re)allocations: graphs of older ones are stale
        self._allocate(self.max_columns if at_once else min(FIRST_COLUMNS, self.max_columns))
        self.lengths = [0] * slots  # tokens stored per slot (host side: the engine's bookkeeping)
        # The same on the device, with which slots decode: a step's mask and positions are
        # computed from these, and they change by small in-place updates, not rebuilt per step.
        self.length_tensor = torch.zeros(slots, dtype=torch.long, device=self.device)
        self.decoding = torch.zeros(slots, dtype=torch.bool, device=self.device)
        self._decoding_slots: set[int] = set()
        self._free = list(range(slots))
        # Set by prepare() for the next forward:
        self._rows = slice(0, 0)
        self._write_at: torch.Tensor | None = None  # [rows, new tokens]: the column of each new token
        self._row_index: torch.Tensor | None = None
        self._kv_columns = 0
        self._numbers = torch.arange(max(slots, self.max_columns), device=self.device)  # see _counting

    @property
    def columns(self) -> int:
        return self.keys[0].shape[2]

    # Slots ------------------------------------------------------------------------

    def take(self) -> int | None:
        """The lowest free slot (None when every slot is taken)."""
        if not self._free:
            return None
        self._free.sort()
        slot = self._free.pop(0)
        self._set_length(slot, 0)
        return slot

    def give_back(self, slot: int) -> None:
        self.stop_decoding(slot)
        self._set_length(slot, 0)
        self._free.append(slot)

    def start_decoding(self, slot: int) -> None:
        self._decoding_slots.add(slot)
        self.decoding[slot] = True

    def stop_decoding(self, slot: int) -> None:
        if slot in self._decoding_slots:
            self._decoding_slots.discard(slot)
            self.decoding[slot] = False

    def _set_length(self, slot: int, tokens: int) -> None:
        self.lengths[slot] = tokens
        self.length_tensor[slot] = tokens

    def rewind(self, slot: int) -> None:
        """Forget what the slot holds (its columns are written again from the start)."""
        self._set_length(slot, 0)

    def top(self) -> int:
        """One past the highest decoding slot (the range a decode step runs)."""
        return max(self._decoding_slots) + 1 if self._decoding_slots else 0

    # Moving a row's keys/values in and out (a channel's kept prefix) ------------------

    def load(self, slot: int, layers: Sequence[LayerKV], tokens: int) -> None:
        """Copy the first `tokens` positions of kept keys/values into an empty slot."""
        self.ensure_columns(tokens + 1)
        for layer, (keys, values) in enumerate(layers):
            self.keys[layer][slot, :, 1:tokens + 1] = keys[0, :, :tokens]
            self.values[layer][slot, :, 1:tokens + 1] = values[0, :, :tokens]
        self._set_length(slot, tokens)

    def copy_out(self, slot: int) -> list[LayerKV]:
        """A copy of the slot's keys/values (to keep for the channel's next turn)."""
        tokens = self.lengths[slot]
        return [(self.keys[layer][slot:slot + 1, :, 1:tokens + 1].clone(),
                 self.values[layer][slot:slot + 1, :, 1:tokens + 1].clone()) for layer in range(self.layers)]

    # Steps ---------------------------------------------------------------------------

    def prefill_inputs(self, slots: Sequence[int], tokens: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Make the next forward write tokens[i] new tokens after slots[i]'s stored ones, the rows
        left-padded to the longest (so that every row's last token is the forward's last:
        logits_to_keep=1 serves them all). Padding writes to the scratch column and attends to it
        alone. Returns (position_ids [rows, longest], mask [rows, 1, longest, columns]): each new
        token attends to its slot's stored tokens and to the new ones up to itself."""
        longest = max(tokens)
        starts = [self.lengths[slot] for slot in slots]
        kv_columns = max(start + count for start, count in zip(starts, tokens)) + 1
        self.ensure_columns(kv_columns)
        step = self._counting(longest)[None, :]
        padding = torch.tensor([longest - count for count in tokens], device=self.device)[:, None]
        real = step >= padding
        positions = torch.where(real, torch.tensor(starts, device=self.device)[:, None] + step - padding, 0)
        write_at = torch.where(real, positions + 1, 0)
        rows = slice(slots[0], slots[0] + 1) if len(slots) == 1 else torch.tensor(slots, device=self.device)
        self._set_step(rows, write_at, kv_columns)
        columns = self._counting(kv_columns)
        allowed = torch.where(real[..., None], (columns >= 1) & (columns <= write_at[..., None]), columns == 0)
        for slot, start, count in zip(slots, starts, tokens):
            self._set_length(slot, start + count)
        return positions, self._additive(allowed[:, None])

    def decode_columns(self) -> int:
        """The key/value columns the next decode step must read (one past the longest decoding
        row's new token); the slots grow first where they are narrower."""
        longest = max((self.lengths[slot] for slot in self._decoding_slots), default=0)
        self.ensure_columns(longest + 2)
        return longest + 2

    def decode_inputs(self, top: int, kv_columns: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Make the next forward write one token for each decoding slot of [0, top) (the others
        write to their scratch column) and read `kv_columns` columns (at least decode_columns(),
        at most `columns`). Returns (position_ids [top, 1], mask [top, 1, 1, kv_columns]).

        Device work only, from the slots' own buffers: a recorded graph of the step
        (bot/llm/decode_graphs.py) replays it with the lengths of the moment."""
        decoding, lengths = self.decoding[:top], self.length_tensor[:top]
        write_at = torch.where(decoding, lengths + 1, 0)
        self._set_step(slice(0, top), write_at[:, None], kv_columns)
        columns = self._counting(self._kv_columns)[None, :]
        allowed = torch.where(decoding[:, None], (columns >= 1) & (columns <= write_at[:, None]), columns == 0)
        return torch.where(decoding, lengths, 0)[:, None], self._additive(allowed[:, None, None, :])

    def advance(self) -> None:
        """After a decode step: every decoding slot holds one more token."""
        self.length_tensor += self.decoding
        for slot in self._decoding_slots:
            self.lengths[slot] += 1

    def _set_step(self, rows: slice | torch.Tensor, write_at: torch.Tensor, kv_columns: int) -> None:
        """`rows`: the forward's slots, a range (decode, one row's prefill: read through views)
        or an index of slots (several rows' prefill)."""
        self._rows, self._write_at, self._kv_columns = rows, write_at, kv_columns
        count = rows.stop - rows.start if isinstance(rows, slice) else len(rows)
        self._row_index = self._counting(count)[:, None]

    def _counting(self, count: int) -> torch.Tensor:
        """0, 1, ..., count - 1 on the device: a view of one tensor made once for the widest a
        slot or a step can be, so that a step makes no new one (on a CPU each is a kernel's fixed
        cost). Never written to, never replaced: a recorded graph reads it at its address."""
        if count > self._numbers.shape[0]:  # not by the sizes above; a fresh one rather than a new address
            return torch.arange(count, device=self.device)
        return self._numbers[:count]

    def _additive(self, allowed: torch.Tensor) -> torch.Tensor:
        """A mask every attention implementation reads alike: 0 where allowed, the dtype's lowest
        value elsewhere (eager attention adds the mask to the scores; SDPA takes it as a bias)."""
        return torch.where(allowed, 0.0, torch.finfo(self.dtype).min).to(self.dtype)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, **_kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Called by each attention layer: store the new tokens' keys/values in their columns and
        return the rows' keys/values up to the step's last column."""
        new_keys, new_values = key_states.transpose(1, 2).to(self.dtype), value_states.transpose(1, 2).to(self.dtype)
        if not isinstance(self._rows, slice):  # slots by index: written in place, then gathered (a copy)
            slots = self._rows
            self.keys[layer_idx][slots[:, None], :, self._write_at] = new_keys
            self.values[layer_idx][slots[:, None], :, self._write_at] = new_values
            return self.keys[layer_idx][slots, :, :self._kv_columns], self.values[layer_idx][slots, :, :self._kv_columns]
        keys = self.keys[layer_idx][self._rows]  # a view of the range: written through, read without a copy
        values = self.values[layer_idx][self._rows]
        keys[self._row_index, :, self._write_at] = new_keys
        values[self._row_index, :, self._write_at] = new_values
        return keys[:, :, :self._kv_columns], values[:, :, :self._kv_columns]

    # Memory ----------------------------------------------------------------------------

    def ensure_columns(self, needed: int) -> None:
        """Grow every slot to at least `needed` columns (doubling: a rare copy, amortised)."""
        if needed > self.max_columns:
            raise ValueError(f"{needed - 1} tokens do not fit a slot of {self.max_columns - 1}")
        if needed > self.columns:
            self._allocate(min(max(needed, 2 * self.columns), self.max_columns))

    def _allocate(self, columns: int) -> None:
        shape = (self.slots, self.kv_heads, columns, self.head_dim)
        self.allocation += 1
        old_keys, old_values = self.keys, self.values
        self.keys = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)]
        self.values = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)]
        for new, old in zip(self.keys + self.values, old_keys + old_values):
            new[:, :, :old.shape[2]] = old
