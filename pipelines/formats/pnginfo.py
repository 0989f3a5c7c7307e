"""PNG metadata: A1111's ``parameters`` text and the GB 45438-2025 implicit AIGC label.

The ``parameters`` text is what A1111, Civitai and most readers show:

    <prompt>
    Negative prompt: <negative prompt>
    Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 512x512, Model: ...

The implicit label follows GB 45438-2025 (metadata implicit label, field set
Label / ContentProducer / ProduceID / ReservedCode1 / ContentPropagator / PropagateID /
ReservedCode2) and is written twice: as an ``AIGC`` text chunk holding the JSON, and inside an
XMP packet (``TC260:AIGC``), where readers of the standard look for it.
"""

from __future__ import annotations

import json
import uuid
from xml.sax.saxutils import escape

from PIL import Image, PngImagePlugin

PRODUCER = "Danqing"
AIGC_KEY = "AIGC"
XMP_KEY = "XML:com.adobe.xmp"

# Order of the "key: value" fields on the last line, as A1111 writes them.
_FIELD_ORDER = ("Steps", "Sampler", "CFG scale", "Seed", "Size", "Model", "Model hash")


def _quote(value: str) -> str:
    """A1111 quotes values that contain the field separators."""
    text = str(value)
    if any(c in text for c in ",:\n\""):
        return json.dumps(text, ensure_ascii=False)
    return text


def format_parameters(prompt: str, negative_prompt: str, fields: dict) -> str:
    ordered = [k for k in _FIELD_ORDER if k in fields] + [k for k in fields if k not in _FIELD_ORDER]
    line = ", ".join(f"{k}: {_quote(fields[k])}" for k in ordered if fields[k] not in (None, ""))
    text = prompt.strip()
    if negative_prompt.strip():
        text += f"\nNegative prompt: {negative_prompt.strip()}"
    return f"{text}\n{line}"


# The longest ``parameters`` text read: a real one is a few KB; anything longer is cut here, so
# no reader ever works on megabytes of text.
MAX_PARAMETERS_CHARS = 64 * 1024
_KEY_CHARS = frozenset(" -/+.")


def _is_key_char(char: str) -> bool:
    return char.isalnum() or char == "_" or char in _KEY_CHARS


def _quoted_end(line: str, start: int) -> int:
    """Index after the closing quote of the JSON string opening at ``start``; -1 if unclosed."""
    i, n = start + 1, len(line)
    while i < n:
        char = line[i]
        if char == "\\":
            i += 2
        elif char == '"':
            return i + 1
        else:
            i += 1
    return -1


def _pairs(line: str) -> list[tuple[str, str]]:
    """The ``key: value`` pairs of A1111's last line, in one pass (each character is looked at
    a bounded number of times, whatever the text: no regex backtracking). A segment that is not
    a pair is skipped up to its comma, as A1111's own reader does."""
    pairs, i, n = [], 0, len(line)
    while i < n:
        while i < n and line[i].isspace():
            i += 1
        # 1. The key: a word character, then word characters, spaces and -/+. up to the colon.
        start = i
        while i < n and _is_key_char(line[i]):
            i += 1
        key = line[start:i].strip()
        if i >= n or line[i] != ":" or not key or not (key[0].isalnum() or key[0] == "_"):
            comma = line.find(",", i)
            i = n if comma < 0 else comma + 1
            continue
        i += 1
        while i < n and line[i].isspace():
            i += 1
        # 2. The value: a JSON string, or everything up to the next comma.
        end = _quoted_end(line, i) if i < n and line[i] == '"' else -1
        if end > 0:
            value = line[i:end]
            try:
                value = json.loads(value)
            except ValueError:
                value = value.strip('"')
            comma = line.find(",", end)
            i = n if comma < 0 else comma + 1
        else:
            comma = line.find(",", i)
            value, i = (line[i:], n) if comma < 0 else (line[i:comma], comma + 1)
        pairs.append((key, str(value).strip()))
    return pairs


def parse_parameters(text: str) -> dict:
    """Parse A1111 ``parameters`` text into prompt, negative prompt and the fields (linear time;
    at most ``MAX_PARAMETERS_CHARS`` are read)."""
    lines = text[:MAX_PARAMETERS_CHARS].strip().split("\n")
    fields: dict[str, str] = {}
    pairs = _pairs(lines[-1]) if lines else []
    if len(pairs) >= 3:
        lines.pop()
        fields = dict(pairs)
    prompt_lines, negative_lines, target = [], [], None
    for line in lines:
        if line.startswith("Negative prompt:"):
            target = negative_lines
            line = line[len("Negative prompt:") :].strip()
        (negative_lines if target is negative_lines else prompt_lines).append(line)
    return {
        "prompt": "\n".join(prompt_lines).strip(),
        "negative_prompt": "\n".join(negative_lines).strip(),
        "fields": fields,
    }


def aigc_label(produce_id: str | None = None, producer: str = PRODUCER) -> dict:
    return {
        "Label": "1",  # 1: the content is AI-generated
        "ContentProducer": producer,
        "ProduceID": produce_id or uuid.uuid4().hex,
        "ReservedCode1": "",
        "ContentPropagator": "",
        "PropagateID": "",
        "ReservedCode2": "",
    }


def _xmp_packet(label: dict) -> str:
    value = escape(json.dumps(label, ensure_ascii=False))
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:TC260="http://www.tc260.org.cn/ns/AIGC/1.0/">'
        f"<TC260:AIGC>{value}</TC260:AIGC>"
        "</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end=\"w\"?>"
    )


def png_metadata(parameters: str, label: dict) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("parameters", parameters)
    info.add_itxt(AIGC_KEY, json.dumps(label, ensure_ascii=False))
    info.add_itxt(XMP_KEY, _xmp_packet(label))
    return info


def read_parameters(image: Image.Image) -> str | None:
    """The ``parameters`` text of a PNG (or A1111-style JPEG/WebP comment), if any."""
    return read_parameters_of(image.info)


def read_parameters_of(info: dict) -> str | None:
    """The ``parameters`` text in an image's ``info`` mapping, at most MAX_PARAMETERS_CHARS."""
    text = info.get("parameters")
    if isinstance(text, bytes):
        text = text[: MAX_PARAMETERS_CHARS * 4].decode("utf-8", "replace")
    if not isinstance(text, str):
        return None
    return text[:MAX_PARAMETERS_CHARS] or None


def read_aigc_label(image: Image.Image) -> dict | None:
    raw = image.info.get(AIGC_KEY)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None
