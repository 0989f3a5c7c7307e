"""Model cards: what A1111 and the Civitai helpers leave beside a model file.

- ``<name>.json`` — A1111's own card (its "user metadata" editor): ``description``,
  ``activation text`` (trigger words), ``sd version``, ``preferred weight``, ``notes``;
- ``<name>.civitai.info`` — the Civitai Helper extension's copy of the model's Civitai page:
  ``trainedWords``, ``baseModel``, ``description`` (HTML), ``model.name``.

Both are small JSON files written by other tools, so they are read defensively: at most
``MAX_CARD_BYTES``, any parse error or odd type ignored (the model is still listed), HTML
reduced to text, every string cut to a length a list can show.
"""

from __future__ import annotations

import html
import json
import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)

MAX_CARD_BYTES = 1 << 20
MAX_TEXT = 500
MAX_WORDS = 20
_TAGS = re.compile(r"<[^>]{0,1000}>")


def _json(path: Path) -> dict:
    try:
        if not path.is_file() or path.stat().st_size > MAX_CARD_BYTES:
            return {}
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError) as exc:
        log.info("ignored the model card %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _text(value: object) -> str:
    """Plain text of a card's field: entities decoded first, then every tag removed (so an
    escaped ``&lt;img src=…&gt;`` never becomes a tag), then the brackets left over dropped.
    The UI still escapes what it shows (ui/common.plain)."""
    if not isinstance(value, str):
        return ""
    text = value
    for _ in range(3):  # doubly escaped entities (&amp;lt;) decode in a second round
        decoded = html.unescape(text)
        if decoded == text:
            break
        text = decoded
    text = _TAGS.sub(" ", text).replace("<", " ").replace(">", " ")
    return re.sub(r"\s+", " ", text).strip()[:MAX_TEXT]


def _words(value: object) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else []
    words = [_text(item) for item in items if isinstance(item, str)]
    return [word for word in words if word][:MAX_WORDS]


def read_card(model: Path) -> dict:
    """The card of ``model`` (its A1111 ``.json`` first, then ``.civitai.info``): description,
    trigger_words, base_model, preferred_weight, title — each only when a card says it."""
    stem = model.name[: -len(model.suffix)] if model.suffix else model.name
    a1111 = _json(model.with_name(stem + ".json"))
    civitai = _json(model.with_name(stem + ".civitai.info"))
    card: dict = {}
    description = _text(a1111.get("description")) or _text(civitai.get("description"))
    if description:
        card["description"] = description
    words = _words(a1111.get("activation text")) + _words(civitai.get("trainedWords"))
    if words:
        card["trigger_words"] = list(dict.fromkeys(words))
    base = _text(a1111.get("sd version")) or _text(civitai.get("baseModel"))
    if base:
        card["base_model"] = base
    weight = a1111.get("preferred weight")
    if isinstance(weight, (int, float)) and not isinstance(weight, bool) and 0 < weight <= 4:
        card["preferred_weight"] = float(weight)
    model_info = civitai.get("model") if isinstance(civitai.get("model"), dict) else {}
    title = _text(model_info.get("name"))
    if title:
        card["title"] = title
    return card
