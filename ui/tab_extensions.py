"""The tabs extensions add, after the built-in ones.

Each extension's ``build(studio)`` runs inside its own tab. One that raises is logged, its tabs
are hidden and the extension is marked failed (系统信息 lists it with the error); the rest of
the UI is built as usual, so a broken extension never stops the app.
"""

from __future__ import annotations

import gradio as gr

from .common import UIContext


def build_tabs(ctx: UIContext, extensions, creation_fields: dict | None = None) -> None:
    """``creation_fields``: the 创作 panel's components by field name, lent to the tabs."""
    if extensions is None:
        return
    extensions.lend_creation_fields(creation_fields or {})
    built: dict[str, list[gr.Tab]] = {}
    for index, (ext, title, build) in enumerate(extensions.tabs()):
        if ext.status != "ok":  # an earlier tab of the same extension failed
            continue
        with gr.Tab(title, id=f"extension-{index}") as tab:
            built.setdefault(ext.name, []).append(tab)
            try:
                build(ctx.studio)
            except Exception as exc:
                ext.fail(exc, "tab")
        if ext.status != "ok":
            for failed in built[ext.name]:
                failed.visible = False
