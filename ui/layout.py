"""The Gradio UI: layout and event wiring only.

It never imports torch or diffusers: everything it runs goes through the ``studio`` object
that app.py passes in (pipelines.studio.Studio). GPU work runs under one concurrency id, so
jobs from different users never interleave; stop is per browser session.

Layout: a model row, then 创作 (one shared parameter panel on the left; on the right the
modes 文生图 / 线稿控制 / 深度控制 / 图生图 / 局部重绘 / 扩图, each with its own button, above one
result gallery whose pictures can be sent on to the editing modes),
超分辨率, 图片信息, 历史, 系统信息, then the tabs extensions add.
"""

from __future__ import annotations

import html
import json
import time

import gradio as gr

from . import inputs, sending, tab_control, tab_download, tab_edit, tab_extensions, tab_tools, tab_train
from .common import GPU, GPU_LIMIT, UIContext, UIOptions, caller_of, plain, user_error, user_of
from .panel import build_panel
from .summary import summarize
from strings import error_text, load

__all__ = ["UIOptions", "build_ui", "page_css", "page_js"]


def model_dropdown_choices(S, studio) -> list[tuple[str, str]]:
    """Each model's name, where it is, and its family when it is not SD 1.x (SDXL, Kolors say so)."""
    rows = []
    for c in studio.model_choices():
        label = (S.model_local if c["local"] else S.model_remote).format(name=c["ref"])
        if c.get("family") in S.family_names:
            label = S.model_family.format(label=label, family=S.family_names[c["family"]])
        rows.append((label, c["ref"]))
    return rows


def vae_dropdown_choices(S, studio) -> list[tuple[str, str]]:
    return [(S.vae_auto, "auto"), (S.vae_none, "none"), *((name, name) for name in studio.vae_choices())]


def model_card_view(S, studio, ref: str | None = None):
    """The card as one short block of Markdown, and its preview image (or None)."""
    card = studio.model_card(ref)
    parts = []
    if card.get("title"):  # a card's words are shown as text, never as tags or links
        parts.append(f"**{plain(card['title'])}**")
    if card.get("base_model"):
        parts.append(S.card_base_model.format(base=plain(card["base_model"])))
    if card.get("trigger_words"):
        parts.append(S.card_trigger_words.format(words=S.list_sep.join(plain(w) for w in card["trigger_words"])))
    text = " · ".join(parts)
    if card.get("description"):
        text = (text + "\n\n" if text else "") + plain(card["description"])
    return text, studio.model_card_image(ref) if card.get("preview") else None


# Pictures shown whole, at any size and proportion, with no scroll bar inside a box: a gallery
# grows with its pictures (the page scrolls), each tile takes its picture's own proportions, a
# picture is at most three quarters of the window tall, and the picked one in a batch too.
WHOLE_PICTURES = """
.whole-pictures, .whole-pictures .grid-wrap { height: auto !important; max-height: none !important;
  overflow: visible !important; }
.whole-pictures .grid-container .thumbnail-item { aspect-ratio: auto !important; height: auto !important; }
.whole-pictures .grid-container .thumbnail-item img { width: 100% !important; height: auto !important;
  max-height: 75vh !important; object-fit: contain !important; }
.whole-pictures .preview { position: relative !important; height: auto !important; min-height: 0 !important; }
.whole-pictures .preview ~ .grid-wrap { display: none !important; }
.whole-pictures .preview .media-button { height: auto !important; }
.whole-pictures .preview .media-button img { width: 100% !important; height: auto !important;
  max-height: 75vh !important; object-fit: contain !important; }
.whole-pictures .thumbnails img { object-fit: contain !important; }
.thumbnail-grid .grid-container .thumbnail-item img { object-fit: contain !important; }
"""

# A job's progress as one clean line in the page's font (what the event's progress says: step,
# time so far and to go, or the place in the line), a thin bar under it, nothing else: not
# Gradio's monospace counter ("processing | 0.6/28.2s"), not a percentage, not the faded last
# result underneath. The line is the bar's own label (aria-label), shown by CSS.
CLEAN_PROGRESS = """
.clean-progress .progress-text, .clean-progress .eta-bar, .clean-progress .progress-level-inner,
.clean-progress .loading { display: none !important; }
.clean-progress .pending { visibility: hidden !important; }
.clean-progress [data-testid="status-tracker"] { background: var(--block-background-fill) !important; }
.clean-progress .progress-bar-wrap { position: relative; overflow: visible; margin-top: 1.9em; height: 6px;
  border: none; border-radius: 3px; }
.clean-progress .progress-bar { border-radius: 3px; }
.clean-progress .progress-bar-wrap::before { content: attr(aria-label); position: absolute; bottom: calc(100% + 6px);
  left: 50%; transform: translateX(-50%); white-space: nowrap; font-family: var(--font); font-size: var(--text-md);
  color: var(--body-text-color); }
"""


def page_css(S) -> str:
    """CSS for ``launch(css=...)``: Gradio's toasts title themselves with their type in English
    ("Error", "Warning", "Info") whatever ``title`` says; the titles are replaced by ours. Then
    whole pictures and the clean progress line (above)."""
    rules = []
    for kind, text in (("error", S.toast_error), ("warning", S.toast_warning), ("info", S.toast_info),
                       ("success", S.toast_info)):
        rules.append(f".toast-title.{kind} {{ font-size: 0 !important; }}"
                     f".toast-title.{kind}::before {{ content: {json.dumps(text, ensure_ascii=False)}; font-size: var(--text-md); }}")
    starting = json.dumps(S.progress_starting, ensure_ascii=False)
    rules.append(WHOLE_PICTURES + CLEAN_PROGRESS +
                 f'.clean-progress [data-testid="status-tracker"]:not(.hide):not(:has(.progress-bar-wrap))::before '
                 f'{{ content: {starting}; font-family: var(--font); font-size: var(--text-md); '
                 f'color: var(--body-text-color); }}')
    return "\n".join(rules)


# Ctrl+Enter (⌘+Enter) starts the mode on screen, as in A1111; while this page's job runs (its
# progress line is showing) it does nothing, so a second press never starts a second job.
CTRL_ENTER = """
document.addEventListener('keydown', (e) => {
  if (e.key !== 'Enter' || !(e.ctrlKey || e.metaKey) || e.repeat) return;
  const button = [...document.querySelectorAll('.generate-button')].find((b) => b.offsetParent !== null);
  if (!button) return;
  e.preventDefault();
  const tracker = document.querySelector('#result-summary [data-testid="status-tracker"]');
  if (button.disabled || (tracker && !tracker.classList.contains('hide'))) return;
  button.click();
}, true);
"""


def page_js(S) -> str:
    """Code for ``launch(js=...)`` (run once the page has loaded): Ctrl+Enter, and Gradio's
    messages when the page loses the server (English text in its page script) replaced by ours
    wherever they appear. (A ``<script>`` in ``head`` would hold the page's first paint for
    twenty seconds: Gradio waits for head scripts to load.)"""
    table = json.dumps(S.connection_messages or {}, ensure_ascii=False)
    return ("(() => {" + CTRL_ENTER + "const table = " + table + ";"
            "const mend = (root) => {const walk = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);"
            "for (let node = walk.nextNode(); node; node = walk.nextNode()) {"
            "const text = node.nodeValue.trim(); if (text in table) node.nodeValue = table[text];}};"
            "new MutationObserver((changes) => {for (const c of changes) {"
            "for (const n of c.addedNodes) {if (n.nodeType === 1 || n.nodeType === 3) mend(n.nodeType === 1 ? n : n.parentNode);}"
            "if (c.type === 'characterData' && c.target.parentNode) mend(c.target.parentNode);}})"
            ".observe(document.body, {childList: true, subtree: true, characterData: true});"
            "})()")


def unfinished_text(S, jobs: list[dict]) -> str:
    """The banner for the jobs a stop cut off ("" when none)."""
    if not jobs:
        return ""
    items = [S.unfinished_job.format(kind=S.queue_kinds.get(j["kind"], j["kind"] or S.queue_kinds["txt2img"]),
                                     time=time.strftime("%m-%d %H:%M", time.localtime(j["at"])))
             for j in jobs[:5]]
    return S.unfinished_banner.format(count=len(jobs), jobs=S.list_sep.join(items) + ("…" if len(jobs) > 5 else ""))


def build_ui(studio, options: UIOptions = UIOptions(), extensions=None) -> gr.Blocks:
    """``extensions``: what extensions.load_extensions returned (tabs, styles), or None."""
    S = load(options.lang)
    ctx = UIContext(S=S, studio=studio, options=options)
    # delete_cache: Gradio copies every shown image (results, live previews, uploads) into its
    # temporary folder; every 10 minutes, files older than an hour go (results stay in outputs/).
    with gr.Blocks(title=S.title, analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        # 1. Header (with logins: who is logged in, and 退出登录) and banners.
        with gr.Row(equal_height=True):
            gr.Markdown(f"# {S.title}\n{S.subtitle}", elem_id="page-title")
            # HTML, not Markdown: a Markdown link opens in a new tab, 退出登录 must leave this one.
            who = gr.HTML(visible=False, elem_id="logged-in", padding=False)
        if options.demo and not options.missing_model:  # the missing-model banner says it already
            gr.Markdown(S.demo_banner, elem_id="demo-banner")
        if options.missing_model:
            gr.Markdown(
                S.missing_model_banner.format(model=options.missing_model, folder=options.missing_folder),
                elem_id="missing-model-banner",
            )
        if options.download_pending:
            gr.Markdown(S.download_banner.format(model=options.download_pending))
        # Jobs of this user that the last stop (restart, crash) cut off: said once, on the page.
        unfinished = gr.Markdown(visible=False, elem_id="unfinished-banner")

        # 2. Base model switcher.
        with gr.Row():
            model = inputs.dropdown(S,
                choices=model_dropdown_choices(S, studio), value=studio.current_model(),
                label=S.model_label, scale=4,
            )
            vae = inputs.dropdown(S, choices=vae_dropdown_choices(S, studio), value=studio.current_vae(),
                                  label=S.vae_label, scale=2)
            refresh_models = gr.Button(S.refresh, scale=1)
        # The chosen model's card (A1111 / Civitai helper files beside it), when it has one.
        card_text, card_image = model_card_view(S, studio)
        with gr.Row(visible=bool(card_text)) as card_row:
            card = gr.Markdown(card_text, elem_id="model-card")
            card_preview = gr.Image(card_image, type="pil", show_label=False, height=120, interactive=False, scale=0,
                                    min_width=120, buttons=[], visible=card_image is not None)

        with gr.Tabs() as tabs:
            # 3. The studio: shared parameters, one tab per generation mode, one gallery.
            with gr.Tab(S.tab_create, id="create"):
                with gr.Row():
                    with gr.Column(scale=5):
                        panel = build_panel(ctx, extensions)
                    with gr.Column(scale=6):
                        with gr.Tabs() as modes:
                            with gr.Tab(S.tab_txt2img, id="txt2img"):
                                draft = gr.Checkbox(False, label=S.draft_label, info=S.draft_info)
                                generate = gr.Button(S.generate, variant="primary", elem_id="generate",
                                                     elem_classes=["generate-button"])
                            units = tab_control.build_tabs(ctx, panel)
                            edit = tab_edit.build_tabs(ctx, units)
                        stop = gr.Button(S.stop, variant="stop", elem_id="stop")
                        # One place under the buttons: the progress line while a job runs (the
                        # preview stays in view below), the readable summary after it.
                        summary = gr.Markdown(elem_id="result-summary", min_height=48, elem_classes=["clean-progress"])
                        # Whole images (a 1024×256 banner is not cropped to a square; WHOLE_PICTURES).
                        gallery = gr.Gallery(label=S.gallery_label, columns=2, format="png", object_fit="contain",
                                             elem_id="gallery", elem_classes=["whole-pictures"], type="filepath",
                                             interactive=False)
                        # Which result is on screen: the one picked in a batch (the gallery's
                        # preview), else the first. Hidden, not a gr.State (no heartbeat).
                        picked = gr.Number(0, visible=False, precision=0)
                        with gr.Row():
                            result_to_img2img = gr.Button(S.send_to_img2img, size="sm", elem_id="result-to-img2img")
                            result_to_inpaint = gr.Button(S.send_to_inpaint, size="sm", elem_id="result-to-inpaint")
                            result_to_outpaint = gr.Button(S.send_to_outpaint, size="sm", elem_id="result-to-outpaint")
                        # The English an English-only model read (tasks/translate.py), editable: the
                        # edit is kept for that Chinese prompt.
                        with gr.Accordion(S.english_label, open=True, visible=False, elem_id="english-box") as english_box:
                            english = gr.Textbox(label=S.english_label, show_label=False, lines=2, elem_id="english-prompt",
                                                 info=S.english_info)
                            english_use = gr.Button(S.english_use, size="sm", elem_id="english-use")
                            english_for = gr.Textbox(visible=False)  # the Chinese prompt it belongs to
                        with gr.Accordion(S.infotext_label, open=False):
                            infotext = gr.Textbox(label=S.infotext_label, show_label=False, lines=4, interactive=False, buttons=["copy"],
                                                  elem_id="infotext")
                        # The JSON the API returns; people read the summary above.
                        info = gr.Code(label=S.info_label, language="json", lines=8, interactive=False, visible=False)
            # 4. Super-resolution, PNG info, saved images, system info.
            tools = tab_tools.build_tabs(ctx)
            tab_download.build_tab(ctx)
            tab_train.build_tab(ctx)
            # 5. Extension tabs; one that fails to build is hidden and listed as failed.
            tab_extensions.build_tabs(ctx, extensions, panel.fields())

        # -- events ------------------------------------------------------------------------
        panel.wire_generation(generate, draft, gallery, info, summary)
        tab_control.wire(ctx, panel, units, gallery, info, summary)
        tab_edit.wire(ctx, panel, edit, gallery, info, summary)
        stop.click(panel.stop_job, None, None, queue=False, api_name="stop")
        panel.wire_seed_buttons(info)
        panel.wire_size_rounding()
        info.change(lambda text: summarize(S, text), info, [summary, infotext], queue=False, api_visibility="private")

        def show_english(text: str):
            """The translation a job used, shown for editing (hidden when there was none)."""
            try:
                found = (json.loads(text or "{}").get("notices") or {}).get("translation") or {}
            except ValueError:
                found = {}
            if found.get("english_prompt") is None:
                return gr.Accordion(visible=False), gr.skip(), gr.skip()
            return gr.Accordion(visible=True), found["english_prompt"], found["prompt"]

        info.change(show_english, info, [english_box, english, english_for], queue=False, api_visibility="private")

        def use_english(chinese: str, text: str, request: gr.Request = None):
            studio.edit_translation(chinese, text, caller_of(request))
            gr.Info(S.english_kept)

        english_use.click(use_english, [english_for, english], None, api_visibility="private")

        def switch_model(ref: str, request: gr.Request = None, progress=gr.Progress(track_tqdm=True)):
            if not options.team.may_change_shared(user_of(request)):
                raise gr.Error(error_text(S, "admin_only", {"admins": options.team.admin_names(S.list_sep),
                                                             "what": S.admin_what_model}), print_exception=False)
            progress(0, desc=S.progress_loading)
            # The dropdown can report one pick twice: the second finds the model in place and says nothing.
            already = ref == studio.current_model() and studio.family()["loaded"] is not None
            try:
                studio.switch_model(ref)
            except Exception as exc:
                raise user_error(S, exc) from None
            if not already:
                gr.Info(S.model_switched.format(name=ref))
            return studio.system_info()

        def show_card(ref: str):
            text, image = model_card_view(S, studio, ref)
            return gr.Row(visible=bool(text)), text, gr.Image(image, visible=image is not None)

        def fit_sizes(width: int, height: int):
            """A size left at one family's default becomes the new model's (512² for SD 1.x,
            1024² for SDXL; half that in the demo); a size the designer chose stays."""
            family = studio.family()
            if family["loaded"] is None:
                return gr.skip(), gr.skip()
            defaults = {name: options.default_size * size // 512 for name, size in family["default_sizes"].items()}
            want = defaults[family["loaded"]["name"]]
            if width != height or width not in defaults.values() or width == want:
                return gr.skip(), gr.skip()
            gr.Info(S.sizes_for_family.format(family=family["loaded"]["label"], width=want, height=want))
            return want, want

        def clip_skip_shown():
            """CLIP 跳过层 only for models whose encoders are CLIP (not Kolors' ChatGLM3 or
            Z-Image's Qwen3); hidden, it goes back to 1."""
            loaded = studio.family()["loaded"]
            if loaded is None or loaded["clip_skip"]:
                return gr.Slider(visible=True)
            return gr.Slider(visible=False, value=1)

        model.input(switch_model, model, tools.system, api_name="switch_model", concurrency_id=GPU,
                    concurrency_limit=GPU_LIMIT).then(show_card, model, [card_row, card, card_preview], api_visibility="private"
                    ).then(fit_sizes, [panel.width, panel.height], [panel.width, panel.height],
                           api_visibility="private"
                    ).then(clip_skip_shown, None, panel.clip_skip, queue=False, api_visibility="private")
        demo.load(clip_skip_shown, None, panel.clip_skip, queue=False, api_visibility="private")

        def switch_vae(choice: str, request: gr.Request = None):
            if not options.team.may_change_shared(user_of(request)):
                raise gr.Error(error_text(S, "admin_only", {"admins": options.team.admin_names(S.list_sep),
                                                             "what": S.admin_what_vae}), print_exception=False)
            try:
                info = studio.set_vae(choice)
            except Exception as exc:
                raise user_error(S, exc) from None
            message = S.vae_switched_auto if choice == "auto" else S.vae_switched
            gr.Info(message.format(name=info.get("vae") or S.vae_own_now))
            return info

        vae.input(switch_vae, vae, tools.system, api_name="switch_vae", concurrency_id=GPU, concurrency_limit=GPU_LIMIT)
        # 刷新 and every page load read the folders again: models, VAEs and the LoRA slots (a
        # LoRA trained or downloaded since shows at once).
        def refreshed():
            return (gr.Dropdown(choices=model_dropdown_choices(S, studio), value=studio.current_model()),
                    gr.Dropdown(choices=vae_dropdown_choices(S, studio), value=studio.current_vae()),
                    *panel.refresh_lora_choices())

        refresh_models.click(refreshed, None, [model, vae, *panel.lora_names], queue=False, api_visibility="private")
        demo.load(refreshed, None, [model, vae, *panel.lora_names], queue=False, api_visibility="private")
        # A picture and its parameters to the mode that uses them next (ui/sending.py): from a
        # result, from 历史, from 图片信息; 历史 → 图片信息 sends the file itself.
        def picked_index(event: gr.SelectData) -> int:
            return event.index

        gallery.select(picked_index, None, picked, queue=False, api_visibility="private")
        for reset in (gallery.change, gallery.preview_close):  # new results, or back to the grid
            reset(lambda: 0, None, picked, queue=False, api_visibility="private")

        def path_of(value):
            return value or None

        def image_of(value):
            return value

        sending.wire(panel, edit, tabs, modes, [
            *(sending.Source(button, [gallery, picked], sending.gallery_picture, mode)
              for button, mode in ((result_to_img2img, "img2img"), (result_to_inpaint, "inpaint"),
                                   (result_to_outpaint, "outpaint"))),
            *(sending.Source(button, [tools.chosen], path_of, mode)
              for button, mode in ((tools.send_recent, None), (tools.recent_to_img2img, "img2img"),
                                   (tools.recent_to_inpaint, "inpaint"), (tools.recent_to_outpaint, "outpaint"))),
            *(sending.Source(button, [tools.png], image_of, mode)
              for button, mode in ((tools.send, None), (tools.png_to_img2img, "img2img"),
                                   (tools.png_to_inpaint, "inpaint"), (tools.png_to_outpaint, "outpaint"))),
        ])

        def inspect(path: str | None, request: gr.Request = None):
            own = studio.own_output(path, user_of(request)) if path else None
            if own is None:
                return gr.update(), gr.update()
            return gr.Tabs(selected="pnginfo"), str(own)

        tools.inspect_recent.click(inspect, tools.chosen, [tabs, tools.png], queue=False, api_visibility="private")
        demo.load(studio.system_info, None, tools.system, queue=False, api_visibility="private")

        def tell_unfinished(request: gr.Request = None):
            caller = caller_of(request)
            text = unfinished_text(S, studio.unfinished_jobs(caller.user, caller.address))
            return gr.Markdown(text, visible=bool(text))

        demo.load(tell_unfinished, None, unfinished, queue=False, api_visibility="private")

        def tell_who(request: gr.Request = None):
            user = user_of(request)
            if not (options.team.logins and user):
                return gr.HTML(visible=False)
            role = S.logged_in_admin if options.team.sees_everyone(user) else ""
            return gr.HTML(S.logged_in.format(user=html.escape(user), role=role), visible=True)

        demo.load(tell_who, None, who, queue=False, api_visibility="private")
        demo.load(tools.for_user, None, tools.admin_only, queue=False, api_visibility="private")

        def queue_timer(event: gr.SelectData):
            return gr.Timer(active=event.value == S.tab_system)

        tabs.select(queue_timer, None, tools.queue_timer, queue=False, api_visibility="private")
        if panel.style is not None:  # styles edited in an extension's tab show up on reload
            demo.load(lambda: gr.Dropdown(choices=extensions.style_names()), None, panel.style, queue=False, api_visibility="private")
    return demo
