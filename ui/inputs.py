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

import gradio as gr

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


class CheckedImageEditor(gr.ImageEditor):
    """The 局部重绘 canvas: its background, painted layers and composite checked alike."""

    is_template = True
    error_strings = None

    def preprocess(self, payload):
        for part in (getattr(payload, "background", None), *(getattr(payload, "layers", None) or ()),
                     getattr(payload, "composite", None)):
            _check_file(self, part)
        return super().preprocess(payload)


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
