"""AUTOMATIC1111's prompt emphasis syntax, read into weighted pieces of text.

What a prompt pasted from Civitai means there:

- ``(词)`` multiplies the weight of what it holds by 1.1, ``((词))`` by 1.21, ``[词]`` divides by 1.1;
- ``(词:1.3)`` sets a factor of its own (a full-width colon ``(词：1.3)``, as a Chinese input
  method types it, is read the same way: an extension of ours);
- ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are the characters themselves;
- brackets left open at the end still apply, a closing one without an opening is text;
- ``BREAK`` (upper case, a word of its own) ends the current token chunk: the text after it
  starts a new one.

Full-width brackets（）【】 are ordinary text, as in A1111: Chinese prose uses them.

The result is a list of ``Piece(text, weight)`` with ``BREAK`` pieces between chunks; the
encoder (tasks/prompts.py) tokenizes each piece, gives its tokens the weight and restores the
embedding's mean afterwards, as A1111 does. Pure Python: no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ROUND = 1.1
SQUARE = 1 / 1.1
BREAK_WORD = re.compile(r"\s*(?<![A-Za-z0-9_])BREAK(?![A-Za-z0-9_])\s*")
FULL_WIDTH_COLON = chr(0xFF1A)  # what a Chinese input method types for ':'
_WEIGHT = re.compile(r"[:\uff1a]\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)")


@dataclass(frozen=True)
class Piece:
    text: str
    weight: float = 1.0
    is_break: bool = False


BREAK = Piece("", 1.0, True)


def parse(prompt: str) -> list[Piece]:
    """The prompt as weighted pieces (neighbours of equal weight merged; BREAKs kept apart)."""
    # 1. Scan: text runs get the product of the open brackets' factors; a closing bracket
    # multiplies everything since its opening one.
    pieces: list[list] = []  # [text, weight, is_break]
    opened: list[tuple[str, int]] = []  # (bracket, index of the first piece inside)
    text = prompt or ""
    i, run = 0, []

    def flush() -> None:
        if run:
            _add_text(pieces, "".join(run))
            run.clear()

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            if not piece[2]:
                piece[1] *= factor

    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in "()[]\\":
            run.append(text[i + 1])
            i += 2
            continue
        if c in "([":
            flush()
            opened.append((c, len(pieces)))
            i += 1
            continue
        if c in (":", FULL_WIDTH_COLON) and any(b == "(" for b, _ in opened):
            weight = _WEIGHT.match(text, i)
            if weight is not None:
                flush()
                while opened[-1][0] != "(":  # an unclosed [ inside (…:w) ends with it
                    scale(opened.pop()[1], SQUARE)
                scale(opened.pop()[1], float(weight.group(1)))
                i = weight.end()
                continue
        if c == ")" and any(b == "(" for b, _ in opened):
            flush()
            while opened[-1][0] != "(":
                scale(opened.pop()[1], SQUARE)
            scale(opened.pop()[1], ROUND)
            i += 1
            continue
        if c == "]" and any(b == "[" for b, _ in opened):
            flush()
            while opened[-1][0] != "[":
                scale(opened.pop()[1], ROUND)
            scale(opened.pop()[1], SQUARE)
            i += 1
            continue
        run.append(c)
        i += 1
    flush()
    # 2. Brackets never closed apply to the end.
    for bracket, start in reversed(opened):
        scale(start, ROUND if bracket == "(" else SQUARE)
    # 3. Merge neighbours of the same weight.
    merged: list[Piece] = []
    for text_, weight, is_break in pieces:
        if is_break:
            merged.append(BREAK)
        elif merged and not merged[-1].is_break and merged[-1].weight == weight:
            merged[-1] = Piece(merged[-1].text + text_, weight)
        elif text_:
            merged.append(Piece(text_, weight))
    return merged


def _add_text(pieces: list[list], text: str) -> None:
    """A run of text, split at each ``BREAK`` word."""
    parts = BREAK_WORD.split(text)
    for k, part in enumerate(parts):
        if k:
            pieces.append(["", 1.0, True])
        if part:
            pieces.append([part, 1.0, False])


def is_plain(pieces: list[Piece]) -> bool:
    """No emphasis and no BREAK: the text can go to the encoder as it is."""
    return all(not p.is_break and p.weight == 1.0 for p in pieces)


def plain_text(pieces: list[Piece]) -> str:
    """The text without its syntax (escapes resolved), weights and BREAKs dropped."""
    return " ".join(p.text for p in pieces if not p.is_break) if any(p.is_break for p in pieces) \
        else "".join(p.text for p in pieces)
