"""Chat messages -> prompt token ids, with the model's own chat template, safe from injection.

`tokenizer.apply_chat_template(tokenize=True)` renders the template to text and tokenizes
the whole of it, so a user who types `<|im_end|>\\n<|im_start|>system` gets real control
tokens: their turn ends and a system turn of theirs begins. Here the template's own markup
keeps its control tokens, and every message's content (user text, persona, stored answers)
is encoded as plain text: typed control tokens become ordinary characters.

How: each content is wrapped in two markers unique to this render (a random nonce, which no
one can type in advance) and rendered by the template as usual, so the template still sees
the real content (SmolLM3 reads `/think` flags in the persona). Outside the markers is
markup, tokenized as the tokenizer would; inside is content, tokenized without its added
tokens. Text between two control tokens is encoded as one piece, as a plain tokenization
does, so a conversation without control-token text gets exactly the ids it always did.
(One difference: where a template strips a content's edge whitespace, the markers shield
it, so it stays. Our contents come stripped, except what users type.)
"""

from __future__ import annotations

import copy
import re
import threading
import uuid
from contextlib import contextmanager
from typing import Iterator

ChatMessages = list[dict[str, str]]

# One piece of the rendered prompt: its text, and whether it is the template's own markup.
Piece = tuple[str, bool]


class TokenizerPool:
    """Copies of a tokenizer, one per caller at a time. Prompts are rendered on other threads than
    the model's (the service renders off the event loop while the model generates): a Rust
    tokenizer used from two threads at once fails ("already borrowed"), and one lock would queue
    every channel's prompt behind the others. A copy costs about 0.2 s (SmolLM2's tokenizer), so
    one is made ahead and more only when renders overlap; each is kept for the next caller."""

    def __init__(self, tokenizer):
        self._pristine = copy.deepcopy(tokenizer)  # copied from, never used: the original may be busy
        self._free = [copy.deepcopy(tokenizer)]
        self._lock = threading.Lock()

    @contextmanager
    def borrowed(self) -> Iterator:
        with self._lock:
            tokenizer = self._free.pop() if self._free else copy.deepcopy(self._pristine)
        try:
            yield tokenizer
        finally:
            with self._lock:
                self._free.append(tokenizer)


def render_prompt_ids(tokenizer, messages: ChatMessages, **template_options) -> list[int]:
    """Token ids of the prompt (generation prompt added); contents never become control tokens."""
    nonce = uuid.uuid4().hex
    wrapped = [{**message, "content": _open(nonce, i) + message["content"] + _close(nonce, i)}
               for i, message in enumerate(messages)]
    rendered = tokenizer.apply_chat_template(wrapped, add_generation_prompt=True, tokenize=False,
                                             **template_options)
    pieces = _split_markup_from_content(rendered, nonce, len(messages))
    if pieces is None:  # the template cut a marker off (it edits content): neutralise instead
        return _render_neutralised(tokenizer, messages, template_options)
    return _encode_pieces(tokenizer, pieces)


def _open(nonce: str, index: int) -> str:
    return f"\x00{nonce}<{index}\x00"


def _close(nonce: str, index: int) -> str:
    return f"\x00{nonce}>{index}\x00"


def _split_markup_from_content(rendered: str, nonce: str, count: int) -> list[Piece] | None:
    """Markup and content pieces in order; None when a marker is missing or unpaired. A message
    may be absent (SmolLM3 prints its persona in the header, not in the loop) or repeated."""
    marker = re.compile(f"\x00{nonce}([<>])(\\d+)\x00")
    pieces: list[Piece] = []
    position, open_index = 0, None
    for match in marker.finditer(rendered):
        kind, index = match.group(1), int(match.group(2))
        text = rendered[position:match.start()]
        if kind == "<":
            if open_index is not None or index >= count:
                return None
            pieces.append((text, True))
            open_index = index
        else:
            if open_index != index:
                return None
            pieces.append((text, False))
            open_index = None
        position = match.end()
    if open_index is not None:
        return None
    pieces.append((rendered[position:], True))
    return pieces


def _encode_pieces(tokenizer, pieces: list[Piece]) -> list[int]:
    """Control tokens only from markup; the text between two control tokens is encoded in one go."""
    added = _added_token_pattern(tokenizer)
    ids: list[int] = []
    text = ""
    for piece, is_markup in pieces:
        parts = added.split(piece) if is_markup else [piece]
        for number, part in enumerate(parts):
            if number % 2:  # an added token of the template's own markup
                ids += encode_plain_text(tokenizer, text)
                ids.append(tokenizer.convert_tokens_to_ids(part))
                text = ""
            else:
                text += part
    return ids + encode_plain_text(tokenizer, text)


def _added_token_pattern(tokenizer) -> re.Pattern:
    tokens = sorted(tokenizer.added_tokens_encoder, key=len, reverse=True)  # longest first
    return re.compile("(" + "|".join(map(re.escape, tokens)) + ")" if tokens else "(?!)")


def encode_plain_text(tokenizer, text: str) -> list[int]:
    """Ids of `text` with no added token recognised, special or not (SmolLM3's <think> is not
    'special', so split_special_tokens alone would still let it through)."""
    if not text:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow tokenizer: it has no way to skip its non-special added tokens
        return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    words = backend.pre_tokenizer.pre_tokenize_str(text) if backend.pre_tokenizer else [(text, None)]
    return [token.id for word, _ in words for token in backend.model.tokenize(word)]


def _render_neutralised(tokenizer, messages: ChatMessages, template_options: dict) -> list[int]:
    """For templates that rewrite content: control-token text in contents is broken with a
    zero-width space (it reads the same), then the prompt is rendered the ordinary way."""
    added = _added_token_pattern(tokenizer)
    safe = [{**m, "content": added.sub(lambda match: _break(match.group(0)), m["content"])} for m in messages]
    return tokenizer.apply_chat_template(safe, add_generation_prompt=True, tokenize=True, return_dict=False,
                                         **template_options)


def _break(token: str) -> str:
    return token[:1] + "\u200b" + token[1:]

