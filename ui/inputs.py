"""Input components that refuse bad values in the user's language.

Gradio checks slider and number bounds and dropdown choices itself, in each component's
``preprocess``, before the event function runs, and words the refusal in English ("Value
1000000000 is greater than maximum value 2048."), or fails with no message at all (a seed of
"abc", NaN). API clients reach those checks directly. These subclasses re-word every refusal
with ui/strings.py; ``CheckedImage`` also refuses an image from its header (too many pixels,
not an image) before Gradio opens, converts or decodes it: a 100-byte PNG can declare
12000x12000. Each is a Gradio template (``is_template``): the browser sees the plain component.

Build them through the functions at the bottom, which attach the strings. Gradio writes a type
stub (``ui/inputs.pyi``) next to any module that subclasses a component; it is git-ignored.
"""

from __future__ import annotations

import math
import threading
import time

import gradio as gr
from fastapi import HTTPException
from gradio.components.base import server
from gradio.components.image_editor import EditorDataBlobs

from pipelines.errors import ParamError
from pipelines.formats.images import check_upload

from strings import error_text, load


def _refusal(component, code: str, **fields) -> gr.Error:
    strings = getattr(component, "error_strings", None) or load()
    return gr.Error(error_text(strings, code, {"name": component.label or "value", **fields}), print_exception=False)


def _short(value: object) -> str:
    return str(value)[:40]


def _check_number(component, payload) -> None:
    if payload is None:
        return
    if isinstance(payload, bool) or not isinstance(payload, (int, float)) or not math.isfinite(payload):
        raise _refusal(component, "not_a_number", value=_short(payload))
    low, high = component.minimum, component.maximum
    if (low is not None and payload < low) or (high is not None and payload > high):
        raise _refusal(component, "out_of_range", value=_short(payload), low=low, high=high)


class CheckedSlider(gr.Slider):
    is_template = True
    error_strings = None  # a plain attribute, not a constructor argument: kept out of the page config

    def preprocess(self, payload):
        _check_number(self, payload)
        return super().preprocess(payload)


class CheckedNumber(gr.Number):
    is_template = True
    error_strings = None

    def preprocess(self, payload):
        _check_number(self, payload)
        return super().preprocess(payload)


class CheckedDropdown(gr.Dropdown):
    is_template = True
    error_strings = None

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except Exception:
            raise _refusal(self, "not_a_choice", value=_short(payload)) from None


class CheckedRadio(gr.Radio):
    is_template = True
    error_strings = None

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except Exception:
            raise _refusal(self, "not_a_choice", value=_short(payload)) from None


def _check_file(component, part) -> None:
    """Refuse an uploaded file (a FileData) from its header, in the component's language."""
    path = getattr(part, "path", None)
    if path and not (getattr(part, "url", None) or "").startswith("data:"):
        try:
            check_upload(path)  # the path is already one Gradio accepted as an upload
        except ParamError as exc:
            strings = component.error_strings or load()
            raise gr.Error(error_text(strings, exc.code, exc.fields), print_exception=False) from None


class CheckedImage(gr.Image):
    is_template = True
    error_strings = None

    def preprocess(self, payload):
        _check_file(self, payload)
        return super().preprocess(payload)


# The 局部重绘 canvas's pieces waiting for their event (Gradio's ImageEditor keeps them in one
# dictionary for every session, and never forgets one that no event takes).
MAX_EDITOR_LAYERS = 4  # our canvas has one paint layer; a few more for editor versions
MAX_BLOB_BYTES = 25 * 2**20  # one piece (the page's own upload limit)
MAX_BLOB_SETS = 64  # canvases waiting at once, over all sessions
MAX_BLOB_SETS_PER_SESSION = 4  # per client address
MAX_BLOB_TOTAL = 256 * 2**20
BLOB_TTL = 600.0  # seconds a canvas waits for its event
BLOB_KINDS = ("background", "layer", "composite")


class CheckedImageEditor(gr.ImageEditor):
    """The 局部重绘 canvas: its background, painted layers and composite checked alike, at most
    ``MAX_EDITOR_LAYERS`` layers; and the route that receives a canvas's pieces from the page
    (``accept_blobs``) bounded: layer index, id, bytes per piece, canvases per client and in
    all, bytes in all, and a canvas no event took is forgotten after ``BLOB_TTL`` seconds.
    (Gradio's own allocates ``index + 1`` list entries from a form field and keeps every piece
    forever: six small requests could take gigabytes.)"""

    is_template = True
    error_strings = None

    def preprocess(self, payload):
        layers = getattr(payload, "layers", None) or ()
        if len(layers) > MAX_EDITOR_LAYERS:
            raise _refusal(self, "too_many_layers", count=len(layers), limit=MAX_EDITOR_LAYERS)
        for part in (getattr(payload, "background", None), *layers, getattr(payload, "composite", None)):
            _check_file(self, part)
        try:
            return super().preprocess(payload)
        finally:
            with _BLOBS_LOCK:
                self._blob_meta().pop(getattr(payload, "id", None), None)

    def _blob_meta(self) -> dict:
        meta = self.__dict__.get("_blobs_meta")
        if meta is None:
            meta = self.__dict__["_blobs_meta"] = {}
        return meta

    @server
    def accept_blobs(self, data, request: gr.Request = None):
        """One piece of a canvas from the page, checked and kept within the bounds above."""
        fields = getattr(data, "data", None) or {}
        files = getattr(data, "files", None) or []
        kind, blob_id, index = fields.get("type"), fields.get("id"), fields.get("index")
        if kind not in BLOB_KINDS or not isinstance(blob_id, str) or not 0 < len(blob_id) <= 64 or not files:
            raise HTTPException(status_code=400, detail="bad canvas piece")
        if kind == "layer":
            try:
                index = int(index)
            except (TypeError, ValueError):
                raise HTTPException(status_code=400, detail="bad layer index") from None
            if not 0 <= index < MAX_EDITOR_LAYERS:
                raise HTTPException(status_code=400, detail="bad layer index")
        piece = files[0][1]
        if not isinstance(piece, (bytes, bytearray)) or len(piece) > MAX_BLOB_BYTES:
            raise HTTPException(status_code=413, detail="canvas piece too large")
        # Whose: the caller's address (the route hands over the HTTP request, not a session).
        session = getattr(getattr(request, "client", None), "host", None) or ""
        now = time.monotonic()
        with _BLOBS_LOCK:
            meta, storage = self._blob_meta(), self.blob_storage
            for old in [k for k, (_, at, _) in meta.items() if now - at > BLOB_TTL or k not in storage]:
                meta.pop(old, None)
                storage.pop(old, None)
            for stray in [k for k in storage if k not in meta]:  # kept by Gradio before us
                storage.pop(stray, None)
            current = storage.get(blob_id)
            if current is None:
                current = EditorDataBlobs(background=None, layers=[], composite=None)
                mine = sorted((at, k) for k, (owner, at, _) in meta.items() if owner == session)
                while len(mine) >= MAX_BLOB_SETS_PER_SESSION:  # this session's oldest canvas goes
                    _, oldest = mine.pop(0)
                    meta.pop(oldest, None)
                    storage.pop(oldest, None)
            if kind == "layer":
                current.layers.extend([None] * (index + 1 - len(current.layers)))
                current.layers[index] = bytes(piece)
            else:
                setattr(current, kind, bytes(piece))
            size = len(current.background or b"") + len(current.composite or b"") + \
                sum(len(layer or b"") for layer in current.layers)
            storage[blob_id] = current
            meta[blob_id] = (session, now, size)
            while len(meta) > MAX_BLOB_SETS or sum(m[2] for m in meta.values()) > MAX_BLOB_TOTAL:
                oldest = min(meta, key=lambda k: meta[k][1])
                meta.pop(oldest, None)
                storage.pop(oldest, None)


_BLOBS_LOCK = threading.Lock()


def _worded(cls, S, args, kwargs):
    component = cls(*args, **kwargs)
    component.error_strings = S
    return component


def slider(S, *args, **kwargs) -> CheckedSlider:
    return _worded(CheckedSlider, S, args, kwargs)


def number(S, *args, **kwargs) -> CheckedNumber:
    return _worded(CheckedNumber, S, args, kwargs)


def dropdown(S, *args, **kwargs) -> CheckedDropdown:
    return _worded(CheckedDropdown, S, args, kwargs)


def radio(S, *args, **kwargs) -> CheckedRadio:
    return _worded(CheckedRadio, S, args, kwargs)


def image_editor(S, *args, **kwargs) -> CheckedImageEditor:
    return _worded(CheckedImageEditor, S, args, kwargs)


def image(S, *args, report: bool = False, **kwargs) -> CheckedImage:
    """An image input whose refused upload (not an image, too large, a format not read) does not
    stay on screen as a broken picture that every later action refuses again: it is cleared at
    once. Where another event reads the input on upload, that event's refusal says why (once);
    ``report`` makes the input say it itself, for one that nothing reads until a button is
    pressed."""
    component = _worded(CheckedImage, S, args, kwargs)

    def clear_refused(payload):
        path = payload.get("path") if isinstance(payload, dict) else getattr(payload, "path", None)
        if not path:
            return gr.skip()
        try:
            check_upload(path)
        except ParamError as exc:
            if report:
                gr.Warning(error_text(S, exc.code, exc.fields))
            return None
        return gr.skip()

    # Queued (not queue=False): Gradio delivers a toast only to queued events.
    component.upload(clear_refused, component, component, preprocess=False, api_visibility="private",
                     show_progress="hidden")
    return component
