"""Split a long answer into Discord-sized messages without breaking code blocks.

Cuts fall at paragraph breaks first, then line breaks, then spaces. A code block
stays whole in one part when it fits; one longer than a whole part is cut at a
line break, closed with a fence and reopened (same language) in the next part. A code block
left open at the end (the model was cut off inside it) is closed, so that whatever follows the
part (a note, a "still writing" mark) does not show as code.
"""

from __future__ import annotations

import re

DISCORD_MESSAGE_LIMIT = 2000
# A fence line (CommonMark): ``` or ~~~ starting the line; a backtick fence's info string has no
# backtick, so a one-line ```code``` span is text, not a block opened and never closed.
_FENCE = re.compile(r"^\s*(```(?!.*`)|~~~)")


def split_message(text: str, limit: int = DISCORD_MESSAGE_LIMIT) -> list[str]:
    """Parts of at most `limit` characters that read as the original when posted in order."""
    text = _with_code_block_closed(text.strip("\n"))
    if len(text) <= limit:
        return [text] if text.strip() else []
    parts: list[str] = []
    current = ""
    for separator, block in _blocks(text):
        joined = f"{current}{separator}{block}" if current else block
        if len(joined) <= limit:
            current = joined
            continue
        if current:
            parts.append(current)
        pieces = _split_block(block, limit)
        parts.extend(pieces[:-1])
        current = pieces[-1]
    if current:
        parts.append(current)
    return [part for part in parts if part.strip()]


def _blocks(text: str) -> list[tuple[str, str]]:
    """(newlines before it, block) for each paragraph and each fenced code block, in order."""
    blocks: list[tuple[str, str]] = []
    lines: list[str] = []
    gap = 0  # newlines between the end of the last block and the next one
    in_code = False

    def finish() -> None:
        nonlocal gap
        if lines:
            blocks.append(("\n" * gap if blocks else "", "\n".join(lines)))
            lines.clear()
            gap = 1

    for line in text.split("\n"):
        is_fence = bool(_FENCE.match(line))
        if in_code:
            lines.append(line)
            if is_fence:
                in_code = False
                finish()
        elif is_fence:
            finish()
            lines.append(line)
            in_code = True
        elif not line.strip():
            finish()
            gap += 1
        else:
            lines.append(line)
    finish()
    return blocks


def _with_code_block_closed(text: str) -> str:
    """The text, with a code block left open at its very end closed (only the last block can be)."""
    blocks = _blocks(text)
    lines = blocks[-1][1].split("\n") if blocks else []
    if lines and _FENCE.match(lines[0]) and not _is_closed(lines):
        return f"{text}\n{_closer(lines[0])}"
    return text


def _closer(opener: str) -> str:
    return "```" if opener.strip().startswith("```") else "~~~"


def _is_closed(code_block: list[str]) -> bool:
    """Whether a fenced code block's lines (its opening fence first) end with a closing fence."""
    return len(code_block) > 1 and bool(_FENCE.match(code_block[-1]))


def _split_block(block: str, limit: int) -> list[str]:
    """Cut one block that is longer than a part (or return it whole if it fits)."""
    if len(block) <= limit:
        return [block]
    lines = block.split("\n")
    if _FENCE.match(lines[0]):
        return _split_code_block(lines, limit)
    return _pack(_fit_lines(lines, limit), "\n", limit)


def _split_code_block(lines: list[str], limit: int) -> list[str]:
    opener, closer = lines[0].strip(), _closer(lines[0])
    body = lines[1:-1] if _is_closed(lines) else lines[1:]
    room = limit - len(opener) - len(closer) - 2  # the two newlines around the body
    if room < 1:
        return _pack(_fit_lines(lines, limit), "\n", limit)
    return [f"{opener}\n{chunk}\n{closer}" for chunk in _pack(_fit_lines(body, room), "\n", room)]


def _fit_lines(lines: list[str], limit: int) -> list[str]:
    """Lines, with any line longer than `limit` cut at spaces (or hard, for one endless word)."""
    fitted: list[str] = []
    for line in lines:
        if len(line) <= limit:
            fitted.append(line)
            continue
        words = re.split(r"(?<= )", line)  # keep each space with the word before it
        for word in words:
            fitted.extend(word[i:i + limit] for i in range(0, len(word), limit))
        fitted[-len(words):] = _pack(fitted[-len(words):], "", limit)
    return fitted


def _pack(units: list[str], separator: str, limit: int) -> list[str]:
    """Greedily join units (each at most `limit` long) into chunks of at most `limit`."""
    chunks: list[str] = []
    current: str | None = None
    for unit in units:
        if current is None:
            current = unit
        elif len(current) + len(separator) + len(unit) <= limit:
            current = current + separator + unit
        else:
            chunks.append(current)
            current = unit
    if current is not None:
        chunks.append(current)
    return chunks
