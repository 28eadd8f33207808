"""Text as the model writes it: deltas from a growing list of tokens, for streaming."""

from __future__ import annotations

from typing import Callable, Iterable

REPLACEMENT_CHAR = "\ufffd"


class IncrementalText:
    """Text deltas from a growing list of tokens, with constant work per token.

    Decoding token by token breaks what spans tokens: characters made of several tokens
    (emoji, CJK) and a token's leading space, which some tokenizers drop at the start of a
    decode; decoding the whole answer at each token is right but quadratic. So each token
    is decoded in a short window of the latest tokens (the incremental detokenization of
    vLLM and TGI). The window starts where the text before it ended cleanly, a token or a
    character before the newest one, so its text there is already sent and what the new
    token adds is the rest. Text that may still change is held back: a trailing U+FFFD
    (half a character so far) and, given `hold`, a trailing start of one of those strings
    (give the special tokens' texts that `decode` removes: a model may spell one with
    ordinary tokens, and its start must not be sent before the decode removes it whole).
    The window moves on whenever nothing is held, so a decode sees a few tokens plus any
    run still forming a character, and `finish` and `text` decode nothing.

    The deltas add up to decode(all the tokens) for a decode that is local, as tokenizers'
    decodes are (no clean_up_tokenization_spaces), with a stop token only last (`decode`
    cuts there). Where a decode changes text already sent, the stream goes on from the new
    text."""

    MAX_WINDOW = 16  # tokens; a window held longer is cut where its text splits (see _cut)

    def __init__(self, decode: Callable[[list[int]], str], hold: Iterable[str] = ()):
        self.decode = decode
        self.token_ids: list[int] = []
        self._sent: list[str] = []  # the deltas, joined when `text` is read
        self._start = 0  # the window is token_ids[_start:] ...
        self._window = ""  # ... whose text, as of the last token, is this ...
        self._done = 0  # ... of which this many characters are sent
        self._clean = 0  # the last token boundary where the text ended cleanly: the next window's start
        self._limit = self.MAX_WINDOW
        self._hold = frozenset(s[:size] for s in hold for size in range(1, len(s)))
        self._hold_longest = max(map(len, self._hold), default=0)

    def push(self, token: int) -> str:
        self.token_ids.append(token)
        window = self.decode(self.token_ids[self._start:])
        settled = self._settled(window)
        if window.startswith(self._window[:self._done]):
            delta = window[self._done:settled]
            self._done = max(self._done, settled)
        else:  # the decode changed text already sent (not local here): go on from the new text
            delta, self._done = "", settled
        self._window = window
        if delta:
            self._sent.append(delta)
        if settled == len(window):
            self._advance()
        elif len(self.token_ids) - self._start > self._limit:
            self._cut()
        return delta

    def finish(self) -> str:
        """The rest of the text, whatever it ends with. Returns the final delta."""
        delta = self._window[self._done:]  # the window's text is already decoded up to the last token
        self._done = len(self._window)
        if delta:
            self._sent.append(delta)
        return delta

    @property
    def text(self) -> str:
        """The text so far, decode(token_ids): what was sent and what is held back."""
        return self.emitted + self._window[self._done:]

    @property
    def emitted(self) -> str:
        """The text sent so far."""
        if len(self._sent) > 1:
            self._sent[:] = ["".join(self._sent)]
        return self._sent[0] if self._sent else ""

    def _settled(self, window: str) -> int:
        """How much of the window's text can no longer change."""
        end = len(window.rstrip(REPLACEMENT_CHAR))
        for size in range(min(self._hold_longest, end), 0, -1):
            if window[end - size:end] in self._hold:
                return end - size
        return end

    def _advance(self) -> None:
        """All of the window is sent: the next one starts at the previous clean boundary, so that
        the newest token is never the first (some tokenizers decode a first token differently)."""
        if self._clean > self._start:
            self._start = self._clean
            self._window = self.decode(self.token_ids[self._start:])
            self._done = len(self._window)
        self._clean = len(self.token_ids)
        self._limit = self.MAX_WINDOW

    def _cut(self) -> None:
        """The window stayed unsettled for long (a model writing broken characters): start it
        at a later token where its text splits in two, the first part sent already."""
        ids, start = self.token_ids, self._start
        for cut in range(len(ids) - 1, start, -1):
            head = self.decode(ids[start:cut])
            if len(head) <= self._done:
                tail = self.decode(ids[cut:])
                if head + tail == self._window:
                    self._start, self._clean = cut, max(self._clean, cut)
                    self._window, self._done = tail, self._done - len(head)
                    return
        self._limit *= 2  # no such token: try again when the window is twice as long
