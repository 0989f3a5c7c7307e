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
import re
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


_PAIR = re.compile(r'\s*([\w][\w \-/+.]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_parameters(text: str) -> dict:
    """Parse A1111 ``parameters`` text into prompt, negative prompt and the fields."""
    lines = text.strip().split("\n")
    fields: dict[str, str] = {}
    if lines and len(_PAIR.findall(lines[-1])) >= 3:
        for key, value in _PAIR.findall(lines.pop()):
            if value.startswith('"'):
                try:
                    value = json.loads(value)
                except ValueError:
                    value = value.strip('"')
            fields[key.strip()] = value.strip()
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
    text = image.info.get("parameters")
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return text or None


def read_aigc_label(image: Image.Image) -> dict | None:
    raw = image.info.get(AIGC_KEY)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None
