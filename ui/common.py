"""Pieces every part of the UI shares: the concurrency id, client ids, error translation."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import SimpleNamespace

import gradio as gr

from extensions import GPU_CONCURRENCY_ID as GPU  # noqa: F401  (the one queue of every model event; ui modules import it from here)
from extensions import GPU_CONCURRENCY_LIMIT as GPU_LIMIT  # noqa: F401  (its limit: none, the studio's line orders jobs)
from pipelines.contracts import StudioApi
from pipelines.errors import DanqingError
from pipelines.team import Team
from pipelines.requests import Caller

from strings import error_text

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class UIOptions:
    """What the UI needs to know about how the app was started."""

    demo: bool = False
    missing_model: str | None = None  # a configured model that could not be found
    missing_folder: str = "models/checkpoints/"
    download_pending: str | None = None  # a configured hub model that downloads on first use
    default_size: int = 512
    lang: str | None = None
    # Who administers, who may change what everyone shares (styles, the base model), whether
    # people log in: the app's one policy (pipelines/team.py).
    team: Team = Team()


@dataclass(frozen=True)
class UIContext:
    S: SimpleNamespace  # the strings of the chosen language
    studio: StudioApi  # pipelines.studio.Studio, seen through its Protocols (no torch imported)
    options: UIOptions


def client_id(request: gr.Request | None) -> str:
    """The stop-switch key of an event (its page session; see Caller.of_event)."""
    return caller_of(request).client


def user_of(request: gr.Request | None) -> str:
    """The logged-in user of an event ("" without --auth)."""
    return getattr(request, "username", None) or ""


def caller_of(request: gr.Request | None) -> Caller:
    """Who an event's job is for: its stop-switch key, its user, its address (turns at the GPU)."""
    return Caller.of_event(request)


def user_error(S, exc: BaseException) -> gr.Error:
    """A Chinese gr.Error for any failure; unexpected ones are logged with their traceback."""
    if isinstance(exc, DanqingError):
        # A user's input or a known condition: one log line, no traceback (Gradio would print one).
        log.info("refused: %s %s", exc.code, {k: str(v)[:60] for k, v in (exc.fields or {}).items()})
        return gr.Error(error_text(S, exc.code, exc.fields), print_exception=False)
    log.error("unexpected error in a UI event", exc_info=exc)
    return gr.Error(error_text(S, "internal"))


def plain(text) -> str:
    """Text from a file or a person (a model card, a LoRA's trigger words, a prompt) shown in
    Markdown as the text itself: never a tag, a link or formatting."""
    text = str(text or "").replace("\n", " ")
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "".join("\\" + c if c in "\\`*_{}[]()#+-.!|~" else c for c in text)


def choices(items: list[str], none_label: str | None = None) -> list[tuple[str, str]]:
    """Dropdown (label, value) pairs; an optional leading "none" entry with value ""."""
    pairs = [(name, name) for name in items]
    return ([(none_label, "")] if none_label is not None else []) + pairs
