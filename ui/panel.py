"""The shared parameter panel of the 创作 tab: prompt, styles, sampler, size, seed, LoRAs and
the 高清放大 post-step. Text-to-image and both ControlNet modes read the same panel."""

from __future__ import annotations

import contextvars
import json
import queue
import threading
import time
from dataclasses import dataclass

import gradio as gr

from pipelines.errors import JobCancelled
from pipelines.requests import (
    DEFAULT_SAMPLER,
    LATENT_UPSCALER,
    Txt2Img,
    MAX_CFG,
    MAX_CLIP_SKIP,
    MAX_IMAGES,
    MAX_SIDE,
    MAX_STEPS,
    MIN_SIDE,
    SAMPLER_NAMES,
    SCHEDULE_TYPES,
    DEFAULT_SCHEDULE,
    declared_fields,
    resolve_seed,
)
from pipelines.formats import infotext

from . import endpoints, inputs
from .binding import endpoint, request_defaults
from .common import GPU, GPU_LIMIT, UIContext, caller_of, choices, client_id, plain, user_error

LORA_SLOTS = 4
# The Gradio API's defaults: the request's own, with "" for no upscaler and None for no LoRA list.
# eta: TCD's own default (a slider takes no null; other samplers ignore it).
API_DEFAULTS = {**request_defaults(Txt2Img), "hires_upscaler": "", "loras": None, "eta": 0.3}


@dataclass
class Panel:
    ctx: UIContext
    prompt: gr.Textbox
    negative: gr.Textbox
    sampler: gr.Dropdown
    steps: gr.Slider
    cfg: gr.Slider
    width: gr.Slider
    height: gr.Slider
    seed: gr.Number
    batch: gr.Slider
    random_seed: gr.Button
    reuse_seed: gr.Button
    lora_names: list
    lora_weights: list
    loras: gr.JSON  # hidden: [[name, weight], ...] gathered from the slots (the API's `loras`)
    lora_info: gr.Markdown
    lora_previews: gr.Gallery  # preview images found beside the chosen LoRA files
    refresh_loras: gr.Button
    hires: gr.Dropdown  # upscaler for the 高清放大 post-step ("" = off)
    hires_scale: gr.Radio
    deepcache: gr.Radio
    hires_pass: gr.Checkbox  # 高清修复: upscale, then a second denoise (text to image)
    hires_strength: gr.Slider
    hires_steps: gr.Slider
    clip_skip: gr.Slider  # CLIP 跳过层 (A1111's CLIP_stop_at_last_layers)
    style: gr.Dropdown | None = None  # prompt styles from the extensions (None: no styles)
    lora_box: gr.Accordion | None = None  # its title names the active LoRAs, even when folded
    schedule: gr.Dropdown | None = None  # A1111's schedule type (trailing for few-step models)
    eta: gr.Slider | None = None  # TCD's gamma (shown with the TCD sampler)
    fast: gr.Checkbox | None = None  # 极速: a few-step model with its published settings
    fast_note: gr.Markdown | None = None
    fast_saved: gr.JSON | None = None  # hidden: the settings 极速 replaced, put back when it goes off
    declared: dict = None  # requests.param fields' controls, by field name
    gather_loras: object = None  # (*names, *weights) -> gathered() values (set by _wire_lora_slots)
    refresh_lora_choices: object = None  # () -> the slots' choices as on disk now

    def gathered(self) -> list:
        """What gathering the LoRA slots sets: the job's list, the description, previews, title."""
        return [self.loras, self.lora_info, self.lora_previews, self.lora_box]

    def fields(self) -> dict:
        """The panel's components by request field name (pipelines/requests.Txt2Img)."""
        return {
            "prompt": self.prompt, "negative_prompt": self.negative, "num_inference_steps": self.steps,
            "guidance_scale": self.cfg, "width": self.width, "height": self.height, "seed": self.seed,
            "num_images_per_prompt": self.batch, "sampler": self.sampler, "loras": self.loras,
            "hires_upscaler": self.hires, "hires_scale": self.hires_scale, "deepcache": self.deepcache,
            "hires_pass": self.hires_pass, "hires_strength": self.hires_strength, "hires_steps": self.hires_steps,
            "clip_skip": self.clip_skip, "schedule_type": self.schedule, "eta": self.eta,
            **(self.declared or {}),
        }

    def stop_job(self, request: gr.Request = None) -> None:
        self.ctx.studio.stop(client_id(request))

    def run(self, job, request, progress, caller=None, on_turn=None, **kwargs):
        """Call ``job(client=..., on_step=..., **kwargs)`` (a studio method with its request
        built inside, so a bad value becomes a Chinese error) and turn its result into
        (gallery files, info JSON). ``client`` is the event's Caller (ui/common.caller_of).
        While the job waits for the GPU its place and estimated wait show as the progress line;
        ``on_turn()`` is called once the GPU is its."""
        S = self.ctx.S
        clock = {"queued": time.monotonic(), "started": time.monotonic()}

        def on_step(i: int, n: int) -> None:
            """The progress line: step i/n with the time so far and the time still to come."""
            elapsed = time.monotonic() - clock["started"]
            remaining = elapsed / i * (n - i) if i else 0
            progress((i, n), desc=S.progress_line.format(step=i, total=n, elapsed=round(elapsed),
                                                         remaining=round(remaining)), unit=S.progress_unit)

        def on_wait(place: int | None, seconds: float | None) -> None:
            """While the job waits for the GPU: its place in the line and the estimated wait
            (place None: its turn has come)."""
            if place is None:
                clock["started"] = time.monotonic()  # the job's own time starts now
                if on_turn is not None:
                    on_turn()
                return
            text = S.queue_place.format(ahead=place + 1)
            waited = time.monotonic() - clock["queued"]
            done = 0.0
            if seconds is not None:
                text += S.queue_eta.format(seconds=max(1, round(seconds)))
                done = waited / (waited + seconds) if waited + seconds > 0 else 0.0
            # A fraction (Gradio shows the text only with one): how much of the wait is behind.
            progress(min(done, 0.99), desc=text)

        try:
            paths, meta = job(client=caller or caller_of(request), on_step=on_step, on_wait=on_wait, **kwargs)
        except JobCancelled:
            gr.Warning(S.stopped)
            return [], json.dumps({"cancelled": True}, ensure_ascii=False)
        except Exception as exc:
            raise user_error(S, exc) from None
        return [str(p) for p in paths], json.dumps(meta, ensure_ascii=False, indent=2)

    def run_live(self, job, request, progress):
        """``run`` as a generator: the job runs in a worker thread and its live previews
        (pipelines/preview.py) are shown in the gallery while it denoises; the last value is
        what ``run`` returns. API clients get the same final outputs."""
        S = self.ctx.S
        caller = caller_of(request)
        updates: queue.SimpleQueue = queue.SimpleQueue()
        done, turn, go = object(), object(), threading.Event()
        outcome: dict = {}

        def on_turn() -> None:
            """The GPU is the job's: before it starts, this event yields once, so a page that
            went away while the job waited is noticed (Gradio ends the event at a yield, and the
            finally below stops the job) before any work is done."""
            updates.put(turn)
            go.wait(5)

        def work() -> None:
            try:
                outcome["value"] = self.run(job, request, progress, caller=caller, on_turn=on_turn,
                                            on_preview=lambda image, step, total: updates.put((image, step, total)))
            except BaseException as exc:  # noqa: BLE001 (re-raised in the event's own thread)
                outcome["error"] = exc
            finally:
                updates.put(done)

        # The job's thread gets this event's context (Gradio's progress tracking lives there).
        context = contextvars.copy_context()
        threading.Thread(target=context.run, args=(work,), daemon=True, name="danqing-job").start()
        try:
            while (item := updates.get()) is not done:
                if item is turn:
                    yield gr.update(), gr.update()
                    go.set()
                    continue
                while not updates.empty():  # show only the newest of several waiting previews
                    newer = updates.get()
                    if newer is done:
                        updates.put(done)
                        break
                    item = newer
                image, step, total = item
                yield [(image, S.live_preview.format(step=step, total=total))], gr.update()
        finally:
            if "value" not in outcome and "error" not in outcome:
                # Gradio closed this event early (the page went away): stop its job too.
                self.ctx.studio.stop(caller.client)
            go.set()
        if "error" in outcome:
            raise outcome["error"]
        yield outcome["value"]

    def wire_generation(self, generate: gr.Button, draft: gr.Checkbox, gallery, info, progress_on) -> None:
        """生成 and Enter in the prompt; the progress bar shows on ``progress_on`` (below the
        gallery), so the live preview stays in view."""
        studio = self.ctx.studio

        def txt2img(values: dict, request: gr.Request = None, progress=None):
            yield from self.run_live(lambda **job: studio.txt2img(Txt2Img.from_fields(values), **job), request, progress)

        event, inputs = endpoint(
            endpoints.names("txt2img"), {**self.fields(), "draft": draft}, txt2img,
            doc="Text to image. Returns the saved PNG files and a JSON info string (seed, all parameters).",
            defaults=API_DEFAULTS,  # no tqdm tracking: the job's own progress line (step, time) is shown
        )
        generate.click(event, inputs, [gallery, info], api_name="txt2img", concurrency_id=GPU, concurrency_limit=GPU_LIMIT,
                       show_progress_on=progress_on)
        self.prompt.submit(event, inputs, [gallery, info], api_visibility="private", concurrency_id=GPU, concurrency_limit=GPU_LIMIT,
                           show_progress_on=progress_on)

    def wire_size_rounding(self) -> None:
        """A typed width of 1003 becomes 1000 in the box too (sizes are multiples of 8), and
        the page says so."""
        S = self.ctx.S
        for slider, label in ((self.width, S.width_label), (self.height, S.height_label)):
            def rounded(value, label=label):
                if value is None:
                    return gr.update()
                side = int(round(float(value) / 8) * 8)
                if side != float(value):
                    gr.Info(S.size_rounded.format(name=label, value=f"{float(value):g}", rounded=side))
                return side

            # Queued: Gradio delivers a toast only to queued events.
            slider.release(rounded, slider, slider, api_visibility="private", show_progress="hidden")

    def wire_seed_buttons(self, info) -> None:
        def last_seed(info_text: str):
            try:
                return int(json.loads(info_text or "{}")["seed"])
            except (ValueError, KeyError, TypeError):
                return -1

        self.random_seed.click(lambda: -1, None, self.seed, queue=False, api_visibility="private")
        self.reuse_seed.click(last_seed, info, self.seed, queue=False, api_visibility="private")

    def send_parameters(self, text: str) -> dict:
        """PNG info → the form: {component: value} for each field the text gives (read by
        formats/infotext.py, matched to the panel's controls by field name), its
        ``<lora:name:weight>`` tags in the LoRA slots. Fields it does not give stay as they are."""
        read = infotext.read(text or "")
        controls = self.fields()
        values = {**read.values, "prompt": read.prompt, "negative_prompt": read.negative_prompt}
        out = {}
        for name, value in values.items():
            control = controls.get(name)
            if control is None or name == "loras":
                continue
            if name == "hires_upscaler" and value != LATENT_UPSCALER and value not in self.ctx.studio.upscalers():
                continue  # an upscaler this server does not have: the box keeps its choice
            if name == "hires_scale":
                offered = hires_scale_choices(True)
                value = gr.Radio(choices=offered, value=value if value in [v for _, v in offered] else 2)
            out[control] = value
        # <lora:name:weight> tags go back into the LoRA slots (the rest emptied).
        listed = _lora_names(self.ctx.studio.loras())
        tagged = [(_listed_name(n, listed), w) for n, w in read.loras]
        tagged = [(n, w) for n, w in tagged if n][:LORA_SLOTS]
        for i, box in enumerate(self.lora_names):
            out[box] = tagged[i][0] if i < len(tagged) else ""
            if i < len(tagged):
                out[self.lora_weights[i]] = tagged[i][1]
        return out

    def send_targets(self) -> list:
        """Every control ``send_parameters`` may set (an event's outputs)."""
        return [*self.fields().values(), *self.lora_names, *self.lora_weights]


def build_panel(ctx: UIContext, styles=None) -> Panel:
    """``styles``: the extensions' style registry (extensions.Extensions), or None."""
    S, studio, options = ctx.S, ctx.studio, ctx.options
    prompt = gr.Textbox(label=S.prompt_label, placeholder=S.prompt_placeholder, lines=3, elem_id="prompt")
    negative = gr.Textbox(value="", label=S.negative_label, placeholder=S.negative_placeholder, lines=2)
    style = apply_style = None
    if styles is not None:
        with gr.Row():
            style = inputs.dropdown(S, choices=styles.style_names(), value=[], multiselect=True, label=S.style_label,
                                info=S.style_info, scale=4)
            apply_style = gr.Button(S.style_apply, scale=1)
        apply_style.click(styles.apply_styles, [prompt, negative, style], [prompt, negative],
                          queue=False, api_visibility="private")
    expand_button = gr.Button(S.expand_button, size="sm", elem_id="expand-now")
    fast = gr.Checkbox(False, label=S.fast_label, info=S.fast_info, elem_id="fast-mode")
    fast_note = gr.Markdown(elem_id="fast-note")
    # Hidden JSON, not gr.State: a State makes every page hold a heartbeat connection open.
    fast_saved = gr.JSON(None, visible=False)
    with gr.Row():
        sampler = inputs.dropdown(S, choices=[(S.sampler_labels[n], n) for n in SAMPLER_NAMES], value=DEFAULT_SAMPLER,
                                  label=S.sampler_label, scale=3)
        schedule = inputs.dropdown(S, choices=[(S.schedule_labels[n], n) for n in SCHEDULE_TYPES], value=DEFAULT_SCHEDULE,
                                   label=S.schedule_label, scale=2)
    eta = inputs.slider(S, 0, 1, value=0.3, step=0.05, label=S.eta_label, info=S.eta_info, visible=False)
    sampler.change(lambda name: gr.Slider(visible=name == "TCD"), sampler, eta, queue=False, api_visibility="private")
    with gr.Row():
        steps = inputs.slider(S, 1, MAX_STEPS, value=20, step=1, label=S.steps_label)
        cfg = inputs.slider(S, 0, MAX_CFG, value=7.0, step=0.5, label=S.cfg_label)
    with gr.Row():
        width = inputs.slider(S, MIN_SIDE, MAX_SIDE, value=options.default_size, step=8, label=S.width_label)
        height = inputs.slider(S, MIN_SIDE, MAX_SIDE, value=options.default_size, step=8, label=S.height_label)
    with gr.Row():
        seed = inputs.number(S, value=-1, precision=0, label=S.seed_label, scale=3)
        random_seed = gr.Button(S.random_seed, scale=1)
        reuse_seed = gr.Button(S.reuse_seed, scale=1)
    with gr.Row():
        batch = inputs.slider(S, 1, MAX_IMAGES, value=1, step=1, label=S.batch_label)
        clip_skip = inputs.slider(S, 1, MAX_CLIP_SKIP, value=1, step=1, label=S.clip_skip_label, info=S.clip_skip_info)
    # Parameters that say everything about themselves (requests.param): a control each, built
    # from the field (range, step, default, its strings), with no code of its own here.
    declared = {}
    for f in declared_fields(Txt2Img):
        low, high = f.metadata["range"]
        if f.type in (bool, "bool"):  # a switch
            declared[f.name] = gr.Checkbox(f.default, label=getattr(S, f.metadata["label"]),
                                           info=getattr(S, f.metadata["info"]) if f.metadata["info"] else None,
                                           elem_id=f"param-{f.name}")
            continue
        declared[f.name] = inputs.slider(S, low, high, value=f.default, step=f.metadata["step"],
                                         label=getattr(S, f.metadata["label"]),
                                         info=getattr(S, f.metadata["info"]) if f.metadata["info"] else None,
                                         elem_id=f"param-{f.name}")

    # LoRA slots: several LoRAs, each with its own weight, applied to every mode.
    with gr.Accordion(S.lora_title, open=False) as lora_box:
        lora_names, lora_weights = [], []
        lora_list = studio.loras()
        for i in range(LORA_SLOTS):
            with gr.Row():
                lora_names.append(inputs.dropdown(S, choices(_lora_names(lora_list), S.none), value="", label=S.lora_slot.format(n=i + 1), scale=3))
                lora_weights.append(inputs.slider(S, -2, 2, value=0.8, step=0.05, label=S.lora_weight, scale=2))
        lora_info = gr.Markdown()
        lora_previews = gr.Gallery(label=S.lora_previews, columns=4, height=140, object_fit="contain", interactive=False)
        refresh_loras = gr.Button(S.refresh, elem_id="refresh-loras")
        loras = gr.JSON(value=[], visible=False, label="loras")  # a label: the API description stays put

    # Textual-inversion embeddings: listed when the accordion opens (reading them needs the
    # model's text encoder, which the page must not load just by opening).
    with gr.Accordion(S.embeddings_title, open=False) as embeddings_box:
        embeddings_info = gr.Markdown(elem_id="embeddings-info")
        refresh_embeddings = gr.Button(S.refresh, size="sm")
    embeddings_box.expand(lambda: embeddings_markdown(S, studio), None, embeddings_info, api_visibility="private")
    refresh_embeddings.click(lambda: embeddings_markdown(S, studio), None, embeddings_info, api_visibility="private")

    # 高清放大 / 高清修复: an upscaler and its factor; with 高清修复 the upscale (ESRGAN or the
    # latents) is denoised again and only that is kept, without it the upscaled twin is saved
    # beside the original. The factor sits beside 高清修复 and offers what each takes.
    upscalers = studio.upscalers()
    hires = inputs.dropdown(S, hires_choices(S, upscalers), value="", label=S.hires_label)
    with gr.Row():
        hires_pass = gr.Checkbox(False, label=S.hires_pass_label, elem_id="hires-pass", scale=3)
        hires_scale = inputs.radio(S, hires_scale_choices(False), value=2, label=S.upscale_scale, scale=2,
                                   elem_id="hires-scale")
    with gr.Row(visible=False) as hires_row:  # shown while 高清修复 is on
        hires_strength = inputs.slider(S, 0, 1, value=0.4, step=0.01, label=S.hires_strength_label)
        hires_steps = inputs.slider(S, 0, MAX_STEPS, value=0, step=1, label=S.hires_steps_label)

    def hires_switched(on: bool, scale):
        choices = hires_scale_choices(bool(on))
        values = [value for _, value in choices]
        return gr.Row(visible=bool(on)), gr.Radio(choices=choices, value=scale if scale in values else 2)

    hires_pass.change(hires_switched, [hires_pass, hires_scale], [hires_row, hires_scale], queue=False,
                      api_visibility="private")
    # DeepCache-style approximation: faster, not pixel-exact; off by default.
    deepcache = inputs.radio(S, [(S.deepcache_off, 0), (S.deepcache_every.format(n=2), 2), (S.deepcache_every.format(n=3), 3)],
                         value=0, label=S.deepcache_label, info=S.deepcache_info)

    panel = Panel(ctx, prompt, negative, sampler, steps, cfg, width, height, seed, batch, random_seed,
                  reuse_seed, lora_names, lora_weights, loras, lora_info, lora_previews, refresh_loras, hires, hires_scale,
                  deepcache, hires_pass, hires_strength, hires_steps, clip_skip, style=style, lora_box=lora_box,
                  schedule=schedule, eta=eta, fast=fast, fast_note=fast_note, fast_saved=fast_saved, declared=declared)
    gather = _wire_lora_slots(panel)
    _wire_fast(panel, gather)

    def expand_now(text: str, seed, request: gr.Request = None):
        """✨ 扩写: the prompt box gets the expanded prompt (editable before 生成)."""
        try:
            return studio.expand_prompt(text or "", resolve_seed(seed), caller_of(request))
        except Exception as exc:
            raise user_error(S, exc) from None

    expand_button.click(expand_now, [prompt, seed], prompt, api_visibility="private", concurrency_id=GPU,
                        concurrency_limit=GPU_LIMIT)
    return panel


def embeddings_markdown(S, studio) -> str:
    try:
        rows = studio.embeddings()
    except Exception as exc:
        return user_error(S, exc).message
    usable = [r for r in rows if not r["problem"]]
    lines = [S.embeddings_usable, *("- " + S.embeddings_row.format(**r) for r in usable)] if usable else [S.embeddings_none]
    unusable = [r for r in rows if r["problem"]]
    if unusable:
        lines += ["", S.embeddings_unusable]
        lines += ["- " + S.embeddings_bad_row.format(file=r["file"], why=S.embeddings_problems[r["problem"]].format(**r))
                  for r in unusable]
    return "\n".join(lines)


def hires_scale_choices(hires_pass: bool) -> list[tuple[str, float]]:
    """The factors offered: 高清修复 takes 1 to 4 (A1111's "Upscale by"), the plain upscale ×2 or ×4."""
    values = (1.5, 2, 2.5, 3, 4) if hires_pass else (2, 4)
    return [(f"×{value:g}", value) for value in values]


def hires_choices(S, upscalers: list[str]) -> list[tuple[str, str]]:
    """关闭, the latent upscaler (hires fix only), then the ESRGAN files."""
    return [(S.hires_off, ""), (S.hires_latent, LATENT_UPSCALER), *[(name, name) for name in upscalers]]


def _lora_names(lora_list: list[dict]) -> list[str]:
    return [item["name"] for item in lora_list]


def _listed_name(tag: str, listed: list[str]) -> str | None:
    """The listed file a ``<lora:tag:w>`` means: the name itself, or the file with that stem."""
    if tag in listed:
        return tag
    stems = [n for n in listed if n.rsplit("/", 1)[-1].rsplit(".", 1)[0] == tag or n.rsplit(".", 1)[0] == tag
             or n.rsplit("/", 1)[0] == tag]
    return stems[0] if len(stems) == 1 else None


def _wire_lora_slots(panel: Panel):
    """The slots' events; returns the function that gathers them (for events that set slots)."""
    S, studio = panel.ctx.S, panel.ctx.studio
    slots = [*panel.lora_names, *panel.lora_weights]

    def gather(*values):
        names, weights = values[:LORA_SLOTS], values[LORA_SLOTS:]
        chosen = [[n, float(w)] for n, w in zip(names, weights) if n]
        catalogue = {item["name"]: item for item in studio.loras()}
        lines = []
        for name, weight in chosen:  # what files and cards say is shown as text (ui/common.plain)
            meta = catalogue.get(name, {})
            words = ", ".join(meta.get("trigger_words") or [])
            lines.append(S.lora_line.format(name=plain(name), weight=weight, words=plain(words) if words else S.none,
                                            base=plain(meta.get("base_model")) if meta.get("base_model") else S.unknown))
            if meta.get("title"):  # the model card beside the file (A1111 .json, .civitai.info)
                lines.append(S.lora_card_titled.format(title=plain(meta["title"]),
                                                       description=plain(meta.get("description"))))
            elif meta.get("description"):
                lines.append(S.lora_card.format(description=plain(meta["description"])))
        previews = [(image, name) for name, _ in chosen if (image := studio.lora_preview(name)) is not None]
        active = S.list_sep.join(f"{name.rsplit('/', 1)[-1].rsplit('.', 1)[0]} ×{weight:g}" for name, weight in chosen)
        title = S.lora_title_active.format(loras=active) if chosen else S.lora_title
        return chosen, "\n".join(lines), previews, gr.Accordion(label=title)

    # What the job uses (the hidden ``loras``) is gathered only from a person's own change of a
    # slot, or after an event that set slots has finished (``.then``): never from the change
    # events of several slots set at once, whose answers race (极速's weight 1 once lost to the
    # slot's old 0.8 that way). Picking a LoRA's name is wired with 极速 (_wire_fast).
    for weight_box in panel.lora_weights:
        weight_box.input(gather, slots, panel.gathered(), queue=False, api_visibility="private")

    def refresh():
        names = _lora_names(studio.loras())
        return [gr.Dropdown(choices=choices(names, S.none)) for _ in range(LORA_SLOTS)]

    # The list as it is on disk whenever a slot is opened (a LoRA trained or downloaded a moment
    # ago, on this page or another), and with 刷新.
    for name_box in panel.lora_names:
        name_box.focus(lambda: gr.Dropdown(choices=choices(_lora_names(studio.loras()), S.none)), None, name_box,
                       queue=False, api_visibility="private", show_progress="hidden")
    panel.refresh_loras.click(refresh, None, panel.lora_names, queue=False, api_visibility="private")
    panel.refresh_lora_choices = refresh
    panel.gather_loras = gather
    return gather


# 极速 -----------------------------------------------------------------------------------------
def fast_text(S, found: dict, file: str | None = None, model: str | None = None, picked: bool = False) -> str:
    """What 极速 (or picking a few-step LoRA) set and why, in one paragraph."""
    extra = (S.fast_schedule if found["schedule_type"] == "SGM Uniform" else "") + \
        (S.fast_eta.format(eta=f"{found['eta']:g}") if found.get("eta") is not None else "")
    low, high = found["cfg_range"]
    values = {"label": found["label"], "why": S.fast_evidence.get(found["evidence"], found["evidence"]),
              "sampler": found["sampler"], "steps": found["steps"], "cfg": f"{found['cfg']:g}", "extra": extra,
              "steps_low": found["steps_range"][0], "steps_high": found["steps_range"][1],
              "cfg_range": f"{low:g}" if low == high else f"{low:g}–{high:g}"}
    if picked:
        return S.fast_picked.format(file=file, **values)
    source = S.fast_lora_source.format(file=file) if file else S.fast_base_source.format(model=model)
    return S.fast_set.format(source=source, **values)


def fast_values(found: dict, eta) -> list:
    """[sampler, steps, cfg, schedule, eta] of a few-step model's published settings (the
    panel's own eta kept when the method names none)."""
    return [found["sampler"], found["steps"], found["cfg"], found["schedule_type"],
            found["eta"] if found.get("eta") is not None else eta]


def fast_switch(S, studio, on: bool, settings: list, names: list, weights: list, saved) -> tuple:
    """极速 turned on or off. ``settings``: the panel's current [sampler, steps, cfg, schedule,
    eta]; ``names``/``weights``: the LoRA slots. On: the few-step model's published settings
    (its LoRA in the first free slot, or the last slot when all are taken), the old values kept
    in ``saved``; off: ``saved`` put back. Returns (checkbox, note, settings, names, weights,
    saved); a switch with no few-step model to use stays off and says what to download."""
    keep = [gr.update()] * len(settings), [gr.update()] * len(names), [gr.update()] * len(weights)
    if not on:
        if not saved:
            return gr.update(), "", *keep, None
        if saved["names"] is None:  # set by picking a LoRA by hand: the slots stay as they are
            return gr.update(), S.fast_restored, list(saved["settings"]), keep[1], keep[2], None
        return gr.update(), S.fast_restored, list(saved["settings"]), list(saved["names"]), list(saved["weights"]), None
    found = studio.fast_settings()
    if found is None:
        return False, S.fast_missing, *keep, None
    if saved is None:  # on twice (a LoRA picked while on): the first old values are the ones to restore
        saved = {"settings": list(settings), "names": list(names), "weights": list(weights)}
    f = found["fewstep"]
    new_settings = fast_values(f, settings[4])
    new_names, new_weights = list(names), list(weights)
    lora = found["lora"]
    if lora and lora not in new_names:
        slot = next((i for i, n in enumerate(new_names) if not n), len(new_names) - 1)
        new_names[slot], new_weights[slot] = lora, 1.0
    return True, fast_text(S, f, file=lora, model=found["model"]), new_settings, new_names, new_weights, saved


def fast_picked(S, studio, name: str, settings: list, saved) -> tuple:
    """A few-step LoRA chosen by hand in a slot: its published settings proposed (set, with
    the note), 极速 shown on so turning it off restores the old ones. Any other LoRA: nothing."""
    row = next((r for r in studio.loras() if r["name"] == name), None) if name else None
    found = row and row.get("fewstep")
    if not found:
        return gr.update(), gr.update(), *([gr.update()] * len(settings)), saved
    if saved is None:
        saved = {"settings": list(settings), "names": None, "weights": None}
    return True, fast_text(S, found, file=name, picked=True), *fast_values(found, settings[4]), saved


def picked_lora(S, studio, name: str, weight, settings: list, saved) -> tuple:
    """A LoRA picked in a slot: the slot's weight becomes the one its card prefers (A1111's
    "preferred weight"), or 1 for a few-step LoRA (the weight its authors publish); a few-step
    LoRA also proposes its settings (``fast_picked``). Returns (weight, *fast_picked)."""
    row = next((r for r in studio.loras() if r["name"] == name), None) if name else None
    if row and row.get("preferred_weight"):
        weight = row["preferred_weight"]
    elif row and row.get("fewstep"):
        weight = 1.0
    else:
        weight = gr.update()
    return weight, *fast_picked(S, studio, name, settings, saved)


def _wire_fast(panel: Panel, gather) -> None:
    S, studio = panel.ctx.S, panel.ctx.studio
    settings = [panel.sampler, panel.steps, panel.cfg, panel.schedule, panel.eta]
    slots = [*panel.lora_names, *panel.lora_weights]

    n = len(settings)

    def switch(on, *values):
        current, names, weights, saved = (list(values[:n]), list(values[n:n + LORA_SLOTS]),
                                          list(values[n + LORA_SLOTS:n + 2 * LORA_SLOTS]), values[-1])
        box, note, new_settings, new_names, new_weights, kept = fast_switch(S, studio, on, current, names, weights, saved)
        # The job's LoRA list from the slots as this answer leaves them.
        final = [(old if isinstance(new, dict) else new, old_w if isinstance(new_w, dict) else new_w)
                 for old, new, old_w, new_w in zip(names, new_names, weights, new_weights)]
        loras = [[name, float(weight)] for name, weight in final if name]
        return box, note, *new_settings, *new_names, *new_weights, kept, loras

    # .input: only the person's own clicks (a LoRA pick sets the box without switching again).
    # The switch sets the job's LoRA list itself, in the same answer as the slots, and the
    # slots' descriptions are gathered after it.
    panel.fast.input(switch, [panel.fast, *settings, *slots, panel.fast_saved],
                     [panel.fast, panel.fast_note, *settings, *slots, panel.fast_saved, panel.loras],
                     queue=False, api_visibility="private").then(
        gather, slots, panel.gathered(), queue=False, api_visibility="private")

    for name_box, weight_box in zip(panel.lora_names, panel.lora_weights):
        name_box.input(lambda name, weight, *rest: picked_lora(S, studio, name, weight, list(rest[:n]), rest[n]),
                       [name_box, weight_box, *settings, panel.fast_saved],
                       [weight_box, panel.fast, panel.fast_note, *settings, panel.fast_saved],
                       queue=False, api_visibility="private").then(
            gather, slots, panel.gathered(), queue=False, api_visibility="private")
