"""历史: every saved image, searchable (any part of a Chinese prompt, a model or LoRA name, a
seed) and filtered (model, sampler, task, dates), paged as thumbnails; the picked one's
parameters, 发送到 创作 / 图生图 / 局部重绘 / 图片信息, 删除 to the trash and 恢复, 分享到团队.
Views: 我的, 团队 (what teammates shared), 全部 (administrators), 回收站. The work is the
studio's history methods (pipelines/history.py, SQLite)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import gradio as gr

from . import inputs
from .common import UIContext, plain, user_error, user_of

PAGE = 48


@dataclass
class HistoryTab:
    gallery: gr.Gallery
    chosen: gr.Textbox  # the picked image's saved path (hidden; checked again on use)
    send: gr.Button
    to_img2img: gr.Button
    to_inpaint: gr.Button
    to_outpaint: gr.Button
    inspect: gr.Button


def build_tab(ctx: UIContext) -> HistoryTab:
    S, studio = ctx.S, ctx.studio
    with gr.Tab(S.tab_history, id="gallery") as tab:
        with gr.Row():
            text = gr.Textbox(label=S.history_search, placeholder=S.history_search_placeholder, scale=4,
                              elem_id="history-search")
            scope = inputs.radio(S, [(S.history_scopes["mine"], "mine"), (S.history_scopes["trash"], "trash")],
                                 value="mine", label=S.history_scope, scale=3, elem_id="history-scope")
            search = gr.Button(S.history_search_button, variant="primary", scale=1, elem_id="history-go")
        with gr.Accordion(S.history_filters, open=False):
            with gr.Row():
                model = inputs.dropdown(S, choices=[(S.history_any, "")], value="", label=S.history_model)
                sampler = inputs.dropdown(S, choices=[(S.history_any, "")], value="", label=S.history_sampler)
                task = inputs.dropdown(S, choices=[(S.history_any, "")], value="", label=S.history_task)
                day_from = gr.DateTime(label=S.history_from, include_time=False, type="string")
                day_to = gr.DateTime(label=S.history_to, include_time=False, type="string")
        # Thumbnails whole (each in its square, proportions kept), the page scrolls, not the box.
        gallery = gr.Gallery(label=S.history_gallery, columns=6, fit_columns=False, object_fit="contain", preview=False,
                             allow_preview=False, elem_id="recent", elem_classes=["whole-pictures", "thumbnail-grid"])
        with gr.Row():
            previous = gr.Button(S.history_previous, size="sm", elem_id="history-previous")
            where = gr.Markdown(elem_id="history-page")
            following = gr.Button(S.history_next, size="sm", elem_id="history-next")
        detail = gr.Markdown(S.history_pick, elem_id="history-detail")
        with gr.Row():
            send = gr.Button(S.send_to_create, elem_id="recent-send")
            to_img2img = gr.Button(S.send_to_img2img, elem_id="recent-to-img2img")
            to_inpaint = gr.Button(S.send_to_inpaint, elem_id="recent-to-inpaint")
            to_outpaint = gr.Button(S.send_to_outpaint, elem_id="recent-to-outpaint")
            inspect = gr.Button(S.send_to_pnginfo, elem_id="recent-inspect")
        # Sharing and the trash apart from the send buttons, and small: a slip does not delete.
        with gr.Row(elem_id="history-manage"):
            share = gr.Button(S.history_share, elem_id="history-share", visible=False, size="sm", scale=0, min_width=120)
            unshare = gr.Button(S.history_unshare, elem_id="history-unshare", visible=False, size="sm", scale=0,
                                min_width=120)
            restore = gr.Button(S.history_restore, elem_id="history-restore", visible=False, size="sm", scale=0,
                                min_width=120)
            gr.HTML("", padding=False)  # pushes 删除 to the right
            delete = gr.Button(S.history_delete, variant="stop", elem_id="history-delete", size="sm", scale=0,
                               min_width=120)
        # The page's entry ids (to map a click to an image), the picked id and path, the offset:
        # hidden boxes rather than gr.State (a State holds a heartbeat stream open per page).
        page_ids = gr.Textbox(visible=False)
        picked = gr.Textbox(visible=False)
        chosen = gr.Textbox(visible=False)
        offset = gr.Number(0, visible=False, precision=0)

    query = [text, scope, model, sampler, task, day_from, day_to]

    def show(text_value, scope_value, model_value, sampler_value, task_value, from_value, to_value, at,
             request: gr.Request = None):
        """One page of thumbnails and where it is; the picked image forgotten."""
        user = user_of(request)
        try:
            page = studio.history(user, scope_value or "mine", text_value or "", model=model_value or "",
                                  sampler=sampler_value or "", task=task_value or "", day_from=_day(from_value),
                                  day_to=_day(to_value), offset=int(at or 0), limit=PAGE)
            items = [(str(studio.history_thumbnail(e)), _caption(S, e)) for e in page.entries]
        except Exception as exc:
            raise user_error(S, exc) from None
        pages = max(1, -(-page.total // PAGE))
        here = S.history_page.format(page=page.offset // PAGE + 1, pages=pages, total=page.total) if page.total \
            else S.history_empty
        trash = scope_value == "trash"
        # 分享 shows once an image of one's own is picked (and only with logins: a team).
        return (items, here, json.dumps([e.id for e in page.entries]), page.offset, "", "", S.history_pick,
                gr.update(visible=False), gr.update(visible=False), gr.update(visible=not trash),
                gr.update(visible=trash))

    outputs = [gallery, where, page_ids, offset, picked, chosen, detail, share, unshare, delete, restore]

    # Gradio hands an event its gr.Request only through a positional parameter it can see in the
    # signature (never after *values), so each event names its inputs.
    def first_page(text_value, scope_value, model_value, sampler_value, task_value, from_value, to_value,
                   request: gr.Request = None):
        return show(text_value, scope_value, model_value, sampler_value, task_value, from_value, to_value, 0,
                    request=request)

    def turn(step: int):
        def event(text_value, scope_value, model_value, sampler_value, task_value, from_value, to_value, at,
                  request: gr.Request = None):
            return show(text_value, scope_value, model_value, sampler_value, task_value, from_value, to_value,
                        max(0, int(at or 0) + step * PAGE), request=request)

        return event

    def opened(scope_value, request: gr.Request = None):
        """The views this user has, and the filters' choices from what is in the history."""
        user = user_of(request)
        views = ["mine"] + (["team"] if user else []) + (["all"] if studio.team.sees_everyone(user) else []) + ["trash"]
        facets = studio.history_facets(user, scope_value if scope_value in views else "mine")
        any_ = [(S.history_any, "")]
        return (gr.update(choices=[(S.history_scopes[v], v) for v in views]),
                gr.update(choices=any_ + [(m, m) for m in facets["model"]]),
                gr.update(choices=any_ + [(m, m) for m in facets["sampler"]]),
                gr.update(choices=any_ + [(S.history_tasks.get(t, t), t) for t in facets["task"]]))

    def pick(ids_json: str, event: gr.SelectData, request: gr.Request = None):
        """The clicked thumbnail's image: its parameters shown, its path kept for 发送到…"""
        try:
            entry_id = json.loads(ids_json or "[]")[event.index]
            entry = studio.history_entry(entry_id, user_of(request))
        except (IndexError, TypeError, ValueError):
            return "", "", S.history_pick, gr.update(), gr.update(), gr.update(), gr.update()
        except Exception as exc:
            raise user_error(S, exc) from None
        user = user_of(request)
        mine = entry.owner == studio.outputs_owner(user)
        shareable = bool(user) and mine and not entry.trashed
        # Only one's own pictures can be deleted, restored or shared: the buttons say so by showing.
        return (str(entry.id), str(studio.history_file(entry)), _detail(S, entry, mine),
                gr.update(visible=shareable and not entry.shared), gr.update(visible=shareable and entry.shared),
                gr.update(visible=mine and not entry.trashed), gr.update(visible=mine and entry.trashed))

    def change(action):
        def event(entry_id: str, text_value, scope_value, model_value, sampler_value, task_value, from_value,
                  to_value, at, request: gr.Request = None):
            if not entry_id:
                raise gr.Error(S.history_pick_first)
            try:
                action(entry_id, user_of(request))
            except Exception as exc:
                raise user_error(S, exc) from None
            return show(text_value, scope_value, model_value, sampler_value, task_value, from_value, to_value, at,
                        request=request)

        return event

    tab.select(opened, scope, [scope, model, sampler, task], queue=False, api_visibility="private").then(
        first_page, query, outputs, queue=False, api_visibility="private")
    for trigger in (search.click, text.submit, scope.change, model.change, sampler.change, task.change):
        trigger(first_page, query, outputs, queue=False, api_visibility="private")
    previous.click(turn(-1), [*query, offset], outputs, queue=False, api_visibility="private")
    following.click(turn(1), [*query, offset], outputs, queue=False, api_visibility="private")
    gallery.select(pick, page_ids, [picked, chosen, detail, share, unshare, delete, restore], queue=False,
                   api_visibility="private")
    for button, action in ((delete, studio.history_delete), (restore, studio.history_restore),
                           (share, lambda i, u: studio.history_share(i, u, True)),
                           (unshare, lambda i, u: studio.history_share(i, u, False))):
        button.click(change(action), [picked, *query, offset], outputs, queue=False, api_visibility="private")
    return HistoryTab(gallery=gallery, chosen=chosen, send=send, to_img2img=to_img2img, to_inpaint=to_inpaint,
                      to_outpaint=to_outpaint, inspect=inspect)


def _day(value) -> str:
    """A date picker's value as the history's day (YYYY-MM-DD), or "" for none."""
    return str(value or "").strip()[:10]


def _caption(S, entry) -> str:
    """What tells pictures apart under their thumbnails: when it was made and its seed."""
    made = time.strftime("%m-%d %H:%M", time.localtime(entry.created)) if entry.created else entry.day
    return S.history_caption.format(time=made, seed=entry.seed) if entry.seed is not None else made


def _detail(S, entry, mine: bool) -> str:
    """The picked image's parameters, in Chinese."""
    rows = [S.history_detail_prompt.format(prompt=plain(entry.prompt) or "—")]
    if entry.negative:
        rows.append(S.history_detail_negative.format(negative=plain(entry.negative)))
    rows.append(S.history_detail_fields.format(
        task=S.history_tasks.get(entry.task, entry.task), model=plain(entry.model) or "—",
        sampler=entry.sampler or "—", steps=entry.steps or "—", seed=entry.seed if entry.seed is not None else "—",
        size=f"{entry.width}×{entry.height}" if entry.width else "—", day=entry.day))
    if entry.loras:
        rows.append(S.history_detail_loras.format(loras=plain(entry.loras)))
    if not mine:
        rows.append(S.history_detail_owner.format(owner=plain(entry.owner)) if entry.owner
                    else S.history_detail_no_owner)
    elif entry.shared:
        rows.append(S.history_detail_shared)
    return "\n\n".join(rows)
