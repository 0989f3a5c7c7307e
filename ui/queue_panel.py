"""任务队列 and 用量 (in 系统信息): the GPU line as the studio shows it to this user — the running job and
the waiting ones in the order they will go, each with its place and estimated wait; one's own
jobs can be cancelled, an administrator's view has everyone's (pipelines/jobs.py Turns: jobs
take turns between users)."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from . import inputs
from .common import UIContext, caller_of, user_error, user_of


def build(ctx: UIContext):
    """The panel; returns (fill, its outputs) for the tab that holds it to fill it on opening."""
    S, studio = ctx.S, ctx.studio
    with gr.Accordion(S.queue_title, open=True):
        summary = gr.Markdown(elem_id="queue-summary")
        table = gr.Dataframe(headers=[S.queue_col_place, S.queue_col_user, S.queue_col_kind, S.queue_col_state,
                                      S.queue_col_wait], datatype=["str"] * 5, interactive=False, wrap=True,
                             elem_id="queue-table")
        with gr.Row():
            pick = inputs.dropdown(S, choices=[], value=None, label=S.queue_pick, scale=3, elem_id="queue-pick")
            cancel = gr.Button(S.queue_cancel, variant="stop", scale=1, elem_id="queue-cancel")
            refresh = gr.Button(S.refresh, scale=1, elem_id="queue-refresh")

    def show(request: gr.Request = None):
        caller = caller_of(request)
        rows = studio.queue_view(caller.user, caller.address)
        table_rows, mine = [], []
        for row in rows:
            place = S.queue_running if row["state"] == "running" else str(row["place"] + 1)
            who = S.queue_you if row["mine"] else (row["user"] or S.queue_someone) if row["id"] else S.queue_someone
            kind = S.queue_kinds.get(row["kind"], row["kind"]) if row["id"] else "—"
            if row["state"] == "running":
                state = S.queue_step.format(step=row["step"], total=row["total"]) if row.get("total") else S.queue_running
                wait = "—"
            else:
                state = S.queue_waiting
                wait = S.queue_eta_cell.format(seconds=round(row["eta"])) if row["eta"] is not None else "—"
            table_rows.append([place, who, kind, state, wait])
            if row["id"]:
                mine.append((f"{place} · {who} · {kind}", row["id"]))
        waiting = sum(r["state"] == "waiting" for r in rows)
        text = S.queue_summary.format(waiting=waiting) if rows else S.queue_empty
        return text, table_rows, gr.update(choices=mine, value=mine[0][1] if mine else None)

    def cancel_job(job_id: str | None, request: gr.Request = None):
        if not job_id:
            raise gr.Error(S.queue_pick_first)
        try:
            caller = caller_of(request)
            studio.cancel_job(job_id, caller.user, caller.address)
        except Exception as exc:
            raise user_error(S, exc) from None
        gr.Info(S.queue_cancelled)
        return show(request)

    with gr.Accordion(S.usage_title, open=False, visible=False) as usage_box:  # shown to administrators
        with gr.Row():
            day_from = gr.DateTime(label=S.history_from, include_time=False, type="string", scale=2)
            day_to = gr.DateTime(label=S.history_to, include_time=False, type="string", scale=2)
            count = gr.Button(S.usage_button, scale=1, elem_id="usage-go")
        usage_table = gr.Dataframe(headers=[S.queue_col_user, S.usage_images, S.usage_jobs, S.usage_seconds,
                                            S.usage_failed, S.usage_cancelled], interactive=False,
                                   elem_id="usage-table")

    def usage(start: str, end: str, request: gr.Request = None):
        try:
            rows = studio.usage(user_of(request), str(start or "").strip()[:10], str(end or "").strip()[:10])
        except Exception as exc:
            raise user_error(S, exc) from None
        return [[r["user"] or S.usage_nobody, r["images"], r["jobs"], r["gpu_seconds"], r["failed"], r["cancelled"]]
                for r in rows]

    count.click(usage, [day_from, day_to], usage_table, queue=False, api_visibility="private")

    outputs = [summary, table, pick]
    refresh.click(show, None, outputs, queue=False, api_visibility="private")
    cancel.click(cancel_job, pick, outputs, queue=False, api_visibility="private")
    # While 系统信息 is open the line refreshes itself every two seconds (ui/layout turns the
    # timer on with the tab and off when another tab is picked).
    timer = gr.Timer(2.0, active=False)
    timer.tick(show, None, outputs, queue=False, api_visibility="private", show_progress="hidden")
    return Panel(fill=show, outputs=outputs, usage=usage_box, timer=timer)


@dataclass(frozen=True)
class Panel:
    fill: object  # (request) -> the outputs' values
    outputs: list
    usage: gr.Accordion  # 用量: administrators only
    timer: gr.Timer
