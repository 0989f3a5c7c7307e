"""模型下载: pick a source and a repository, see its files and sizes, download one file (or the
whole diffusers repository) into the right models/ folder; progress, cancel and errors in
Chinese. The work is pipelines/downloads.py's; this is layout and wiring."""

from __future__ import annotations

import html

import gradio as gr

from strings import error_text

from . import inputs
from .common import UIContext, user_error, user_of

KIND_ORDER = ("checkpoints", "lora", "vae", "embeddings", "controlnet", "upscalers", "captioners", "translators", "prompters")


def _size(S, value) -> str:
    if not isinstance(value, (int, float)):
        return S.download_size_unknown
    for unit, step in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if value >= step:
            return f"{value / step:.1f} {unit}"
    return f"{int(value)} B"


def _guess_kind(path: str) -> str:
    name = path.lower()
    if "lora" in name or "lycoris" in name:
        return "lora"
    if "vae" in name:
        return "vae"
    if "controlnet" in name or "control_" in name:
        return "controlnet"
    if "esrgan" in name or name.endswith(".pth"):
        return "upscalers"
    if name.endswith(".pt"):
        return "embeddings"
    return "checkpoints"


def jobs_html(S, rows: list[dict]) -> str:
    """The download list: name, state, a progress bar, bytes, the error in Chinese."""
    if not rows:
        return f"<p>{html.escape(S.download_no_jobs)}</p>"
    lines = []
    for r in rows:
        total, done = r["total_bytes"], r["done_bytes"]
        bar = (f'<progress value="{done}" max="{total}" style="width:12em"></progress>' if total
               else "")
        amount = f"{_size(S, done)} / {_size(S, total)}" if total else _size(S, done)
        state = S.download_states.get(r["state"], r["state"])
        error = ""
        if r["error"]:
            error = f'<br><span style="color:var(--error-text-color)">{html.escape(error_text(S, r["error"]["code"], r["error"]["fields"]))}</span>'
        head = S.download_job_head.format(target=html.escape(r["target"]), kind=html.escape(S.download_kinds[r["kind"]]),
                                          repo=html.escape(r["repo"]))
        lines.append(f"<li>{head} {html.escape(state)} {bar} {html.escape(amount)}{error}</li>")
    return "<ul style='list-style:none;padding-left:0'>" + "".join(lines) + "</ul>"


def build_tab(ctx: UIContext) -> None:
    S, studio, options = ctx.S, ctx.studio, ctx.options
    with gr.Tab(S.tab_download, id="download"):
        sources = studio.download_sources()
        gr.Markdown(S.download_intro.format(hf=sources["huggingface"], mirror=sources["hf_mirror"],
                                            ms=sources["modelscope"]))
        suggestions = studio.download_suggestions()
        suggest = inputs.dropdown(S, choices=[(S.download_suggestions[name], name) for name, *_ in suggestions],
                                  value=None, label=S.download_suggest_label, elem_id="download-suggest")
        with gr.Row():
            source = inputs.radio(S, [(S.download_source_hf, "huggingface"), (S.download_source_mirror, "hf_mirror"),
                                      (S.download_source_ms, "modelscope")],
                                  value="huggingface", label=S.download_source_label, scale=3)
            repo = gr.Textbox(label=S.download_repo_label, placeholder=S.download_repo_placeholder, scale=3,
                              elem_id="download-repo")
            look = gr.Button(S.download_look, scale=1)
        with gr.Row():
            file = inputs.dropdown(S, choices=[(S.download_whole_repo, "")], value="", label=S.download_file_label,
                                   scale=3, elem_id="download-file")
            kind = inputs.dropdown(S, choices=[(S.download_kinds[k], k) for k in KIND_ORDER], value="checkpoints",
                                   label=S.download_kind_label, scale=2)
        sha = gr.Textbox(label=S.download_sha_label, placeholder=S.download_sha_placeholder)
        summary = gr.Markdown(elem_id="download-summary", elem_classes=["clean-progress"], label=S.download_summary_label)
        with gr.Row():
            start = gr.Button(S.download_start, variant="primary", elem_id="download-start")
            running = inputs.dropdown(S, choices=[], value=None, label=S.download_running_label, scale=2)
            cancel = gr.Button(S.download_cancel, variant="stop")
        jobs = gr.HTML(jobs_html(S, studio.download_rows()), elem_id="download-jobs", label=S.download_jobs_label)
        timer = gr.Timer(1.0, active=False)

    def refused(request) -> bool:
        return not options.team.may_change_shared(user_of(request))

    def look_up(source: str, repo: str, request: gr.Request = None):
        """The repository's files and sizes (nothing is downloaded yet). A failure (offline, no
        such repository) is said in the summary line; the other fields keep what they had. Only
        who may download makes the server ask the hub."""
        if refused(request):
            return gr.update(), gr.update(), "⚠ " + error_text(S, "admin_only", {
                "admins": options.team.admin_names(S.list_sep), "what": S.admin_what_download})
        try:
            rows = studio.download_plan(source, (repo or "").strip())
        except Exception as exc:
            return gr.update(), gr.update(), "⚠ " + user_error(S, exc).message
        total = sum(r["size"] or 0 for r in rows)
        picks = [(S.download_whole_repo_size.format(count=len(rows), size=_size(S, total)), "")]
        picks += [(S.download_file_row.format(path=r["path"], size=_size(S, r["size"])), r["path"]) for r in rows]
        weights = [r for r in rows if r["path"].endswith((".safetensors", ".ckpt", ".pt", ".pth", ".bin"))]
        guess = weights[0]["path"] if len(weights) == 1 else ""
        return (gr.Dropdown(choices=picks, value=guess),
                _guess_kind(f"{repo}/{guess}") if guess else "checkpoints",
                S.download_found.format(count=len(rows), size=_size(S, total)))

    def begin(source: str, repo: str, file: str, kind: str, sha256: str, request: gr.Request = None):
        # A refusal is a toast; the download list and fields stay as they were (no error marks).
        if refused(request):
            gr.Warning(error_text(S, "admin_only", {"admins": options.team.admin_names(S.list_sep),
                                                    "what": S.admin_what_download}))
            return refresh()
        try:
            row = studio.start_download(source, (repo or "").strip(), kind, file or None, (sha256 or "").strip() or None,
                                        user=user_of(request) or "")
        except Exception as exc:
            gr.Warning(user_error(S, exc).message)
            return refresh()
        gr.Info(S.download_started.format(name=row["target"]))
        return refresh()

    def refresh():
        rows = studio.download_rows()
        active = [r for r in rows if r["state"] in ("queued", "running")]
        return (jobs_html(S, rows), gr.Timer(active=bool(active)),
                gr.Dropdown(choices=[(r["target"], r["id"]) for r in active], value=active[0]["id"] if active else None))

    def stop(job_id: str, request: gr.Request = None):
        if not job_id:
            return refresh()
        try:
            studio.cancel_download(job_id, user_of(request) or "", admin=not refused(request))
        except Exception as exc:
            raise user_error(S, exc) from None
        return refresh()

    def suggested(name: str):
        for key, where, repo_id, folder in suggestions:
            if key == name:
                return where, repo_id, folder
        return gr.update(), gr.update(), gr.update()

    suggest.input(suggested, suggest, [source, repo, kind], queue=False, api_visibility="private")
    look.click(look_up, [source, repo], [file, kind, summary], api_name="download_files", show_progress_on=summary)
    repo.submit(look_up, [source, repo], [file, kind, summary], api_visibility="private", show_progress_on=summary)
    file.input(lambda r, f: _guess_kind(f"{r}/{f}") if f else gr.update(), [repo, file], kind, queue=False,
               api_visibility="private")
    start.click(begin, [source, repo, file, kind, sha], [jobs, timer, running], api_name="download_start")
    cancel.click(stop, running, [jobs, timer, running], api_name="download_cancel")
    timer.tick(refresh, None, [jobs, timer, running], queue=False, api_visibility="private", show_progress="hidden")
