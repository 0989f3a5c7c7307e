"""Which parts of a prompt a translator may touch (pure Python).

A1111's syntax survives translation untouched: ``<lora:…>`` / ``<hypernet:…>`` tags, ``BREAK``,
the brackets of emphasis and their ``:1.2`` weights, escaped brackets, and every run of ASCII
(English words, embedding names such as ``xl-style``, numbers). Only runs that hold Chinese
(CJK ideographs and the Chinese punctuation inside them) are translated, one phrase at a time:
phrases are cut at commas (ASCII and full-width), enumeration commas, semicolons and line ends,
the way prompts are written. Full-width separators come back as their ASCII forms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")

# The syntax that is never translated, and the separators phrases are cut at.
_SYNTAX = re.compile(
    r"(<[^<>]*>"  # extra-network tags
    r"|\bBREAK\b"
    r"|\\[()\[\]]"  # escaped brackets are text, but not Chinese
    r"|:\s*-?\d+(?:\.\d+)?(?=\s*[)\]])"  # an emphasis weight before its closing bracket
    r"|[()\[\]]"
    r"|[,\uff0c\u3001;\uff1b\n])"  # commas (ASCII, full-width, enumeration), semicolons, line ends
)
# Inside a phrase: ASCII runs (words, names, numbers) stay, the rest is translated.
_ASCII_RUN = re.compile(r"([A-Za-z0-9_\-.'/+*#@&%$!?=~^|\\\"]+(?:\s+[A-Za-z0-9_\-.'/+*#@&%$!?=~^|\\\"]+)*)")
_SEPARATORS = {chr(0xFF0C): ", ", chr(0x3001): ", ", chr(0xFF1B): "; "}  # full-width → ASCII


def has_chinese(text: str) -> bool:
    return bool(CJK.search(text or ""))


@dataclass
class Plan:
    """A prompt cut into kept parts and phrases to translate: ``parts`` holds strings (kept as
    they are) and ints (the index of a phrase in ``phrases``)."""

    parts: list
    phrases: list[str]

    def assemble(self, translations: list[str]) -> str:
        out = []
        for part in self.parts:
            out.append(translations[part].strip() if isinstance(part, int) else part)
        text = "".join(out)
        text = re.sub(r"[ \t]{2,}", " ", text)
        return re.sub(r"\s+([,;)\]])", r"\1", text).strip()


def plan(text: str) -> Plan:
    """The kept parts and the Chinese phrases of ``text``, in order."""
    parts: list = []
    phrases: list[str] = []
    for piece in _SYNTAX.split(text or ""):
        if not piece:
            continue
        if _SYNTAX.fullmatch(piece):
            parts.append(_SEPARATORS.get(piece, piece))
            continue
        if not has_chinese(piece):
            parts.append(piece)
            continue
        for run in _ASCII_RUN.split(piece):
            if not run:
                continue
            if has_chinese(run):
                lead = run[: len(run) - len(run.lstrip())]
                tail = run[len(run.rstrip()):]
                if lead:
                    parts.append(lead)
                parts.append(len(phrases))
                phrases.append(run.strip())
                if tail:
                    parts.append(tail)
            else:
                parts.append(run)
    # Two neighbouring pieces of text with only spaces between them read better apart.
    return Plan(_spaced(parts), phrases)


def _spaced(parts: list) -> list:
    """A space between a translated phrase and an ASCII word that touch ("xl-style远山")."""
    out: list = []
    for part in parts:
        if out and (isinstance(part, int) != isinstance(out[-1], int)):
            left, right = out[-1], part
            left_text = left if isinstance(left, str) else "x"
            right_text = right if isinstance(right, str) else "x"
            if left_text[-1:].isalnum() and right_text[:1].isalnum():
                out.append(" ")
        out.append(part)
    return out
