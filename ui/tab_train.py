"""训练: a designer trains a LoRA on their own pictures. Name and trigger word, pictures (files,
same-name .txt captions, or one zip), captions edited in a table, a preset or the real knobs;
while it trains: step, loss curve, time left, samples; 停止 keeps a checkpoint, 继续训练 resumes.
The work is studio.prepare_training / studio.train_lora (pipelines/tasks/train.py)."""

from __future__ import annotations

import contextvars
import threading
import time
from pathlib import Path

import gradio as gr

from pipelines.errors import JobCancelled, ParamError
from pipelines.requests import MAX_TRAIN_STEPS, TRAIN_PRESETS, TrainLora

from . import inputs
from .binding import endpoint
from .common import GPU, GPU_LIMIT, UIContext, caller_of, user_error, user_of



def build_tab(ctx: UIContext) -> None:
    S, studio = ctx.S, ctx.studio
    standard = TRAIN_PRESETS["standard"]
    with gr.Tab(S.tab_train, id="train"):
        gr.Markdown(S.train_intro)
        with gr.Row():
            name = gr.Textbox(label=S.train_name_label, placeholder=S.train_name_placeholder, elem_id="train-name")
            trigger = gr.Textbox(label=S.train_trigger_label, placeholder=S.train_trigger_placeholder,
                                 elem_id="train-trigger")
        with gr.Row():
            with gr.Column(scale=3):
                files = gr.File(label=S.train_files_label, file_count="multiple",
                                file_types=[".png", ".jpg", ".jpeg", ".webp", ".bmp", ".txt", ".zip"],
                                elem_id="train-files")
                read = gr.Button(S.train_read)
                # What 读取图片 and 自动描述 did, said here (a toast would cover the table).
                note = gr.Markdown(elem_id="train-note", label=S.train_note_label)
            with gr.Column(scale=4):
                # The pictures themselves, whole, each under its file name; captions in the table.
                thumbs = gr.Gallery(label=S.train_pictures, columns=6, fit_columns=False, object_fit="contain",
                                    allow_preview=False,
                                    elem_id="train-pictures", elem_classes=["whole-pictures", "thumbnail-grid"],
                                    visible=False)
                table = gr.Dataframe(headers=[S.train_col_file, S.train_col_caption], datatype=["str", "str"],
                                     column_count=(2, "fixed"), interactive=True, wrap=True, label=S.train_table_label,
                                     column_widths=["30%", "70%"], elem_id="train-captions")
                captioners = studio.captioners()
                with gr.Row(visible=bool(captioners)) as caption_row:
                    captioner = inputs.dropdown(S, choices=captioners, value=captioners[0] if captioners else None,
                                                label=S.train_captioner, info=S.train_captioner_info,
                                                elem_id="train-captioner", scale=3)
                    with gr.Column(scale=2, min_width=160):
                        overwrite = gr.Checkbox(False, label=S.train_caption_overwrite)
                        caption = gr.Button(S.train_caption_run, elem_id="train-caption")
                caption_hint = gr.Markdown(S.train_captioner_none, visible=not captioners, label=S.train_hint_label)
        preset = inputs.radio(S, [(S.train_presets[k], k) for k in TRAIN_PRESETS], value="standard",
                              label=S.train_preset_label, info=S.train_preset_info)
        with gr.Accordion(S.train_advanced, open=False):
            with gr.Row():
                steps = inputs.slider(S, 10, MAX_TRAIN_STEPS, value=standard["steps"], step=10, label=S.train_steps)
                epochs = inputs.slider(S, 0, 200, value=0, step=1, label=S.train_epochs)
                repeats = inputs.slider(S, 1, 100, value=1, step=1, label=S.train_repeats)
            with gr.Row():
                rank = inputs.slider(S, 1, 128, value=standard["rank"], step=1, label=S.train_rank)
                alpha = inputs.slider(S, 1, 128, value=standard["alpha"], step=1, label=S.train_alpha)
            with gr.Row():
                learning_rate = gr.Number(value=standard["learning_rate"], label=S.train_lr)
                text_encoder_lr = gr.Number(value=5e-5, label=S.train_te_lr)
                train_text_encoder = gr.Checkbox(False, label=S.train_te)
            with gr.Row():
                resolution = inputs.slider(S, 256, 1024, value=standard["resolution"], step=64, label=S.train_resolution)
                batch_size = inputs.slider(S, 1, 8, value=1, step=1, label=S.train_batch)
                seed = gr.Number(value=0, precision=0, label=S.train_seed)
            with gr.Row():
                save_every = inputs.slider(S, 0, 2000, value=0, step=50, label=S.train_save_every)
                sample_every = inputs.slider(S, 0, 2000, value=0, step=50, label=S.train_sample_every)
                min_snr_gamma = inputs.slider(S, 0, 20, value=0, step=1, label=S.train_min_snr)
            sample_prompt = gr.Textbox(label=S.train_sample_prompt)
            with gr.Row():
                buckets = gr.Checkbox(True, label=S.train_buckets)
                gradient_checkpointing = gr.Checkbox(False, label=S.train_checkpointing)
        with gr.Row():
            start = gr.Button(S.train_start, variant="primary", elem_id="train-start")
            resume = gr.Button(S.train_resume, elem_id="train-resume")
            stop = gr.Button(S.train_stop, variant="stop", elem_id="train-stop")
        status = gr.Markdown(elem_id="train-status", elem_classes=["clean-progress"], label=S.train_status_label)
        with gr.Row():
            # Whole steps on the x-axis (no "0.5"), labels that do not run into each other.
            curve = gr.LinePlot(x=S.train_axis_step, y=S.train_axis_loss, label=S.train_curve, height=240,
                                x_axis_format="d", x_label_angle=0, elem_id="train-curve")
            samples = gr.Gallery(label=S.train_samples, columns=3, height=240, object_fit="contain")
    # The 高级 knobs by TrainLora field name: one list for the events' inputs and the request.
    knobs = {"steps": steps, "epochs": epochs, "repeats": repeats, "buckets": buckets, "rank": rank, "alpha": alpha, "learning_rate": learning_rate,
             "text_encoder_lr": text_encoder_lr, "train_text_encoder": train_text_encoder, "resolution": resolution,
             "batch_size": batch_size, "seed": seed, "save_every": save_every, "sample_every": sample_every,
             "sample_prompt": sample_prompt, "min_snr_gamma": min_snr_gamma,
             "gradient_checkpointing": gradient_checkpointing}

    def apply_preset(key: str):
        values = TRAIN_PRESETS.get(key, standard)
        return [values[k] for k in ("steps", "rank", "alpha", "learning_rate", "resolution")]

    def read_files(name_value: str, uploaded, request: gr.Request = None):
        """The pictures gathered into the run's folder; their captions into the table."""
        try:
            found = studio.prepare_training(name_value, [_path(f) for f in (uploaded or [])], user_of(request) or "")
        except Exception as exc:
            raise user_error(S, exc) from None
        rows = [[_name(p), c] for p, c in zip(found["images"], found["captions"])]
        pictures = gr.Gallery([(p, _name(p)) for p in found["images"]], visible=bool(rows))
        return rows, pictures, S.train_read_done.format(count=len(rows)), *_captioner_updates(S, studio.captioners())

    def _chosen(name_value: str, rows, user: str) -> tuple[Path, list[tuple[str, str]]]:
        """The run's folder and the table's (picture path, caption) rows that name its pictures."""
        run_dir = studio.training_dir(name_value, user)
        images_dir = run_dir / "images"
        pictures = {_name(str(p)): str(p) for p in sorted(images_dir.glob("*")) if p.suffix.lower() != ".txt"}
        table_rows = [r for r in (rows.values.tolist() if hasattr(rows, "values") else rows or []) if r and r[0]]
        chosen = [(pictures[r[0]], str(r[1] or "")) for r in table_rows if r[0] in pictures]
        if not chosen:
            raise ParamError("train_no_images")
        return run_dir, chosen

    def write_captions(name_value: str, rows, captioner_name: str, replace: bool, request: gr.Request = None):
        """Captions from the local captioner for the pictures without one (or all of them)."""
        try:
            _, chosen = _chosen(name_value, rows, user_of(request) or "")
            todo = [i for i, (_, text) in enumerate(chosen) if replace or not text.strip()]
            if not todo:
                return [[_name(p), c] for p, c in chosen], S.train_caption_nothing
            written = studio.caption_pictures([chosen[i][0] for i in todo], captioner_name or "",
                                              client=caller_of(request))
        except Exception as exc:
            raise user_error(S, exc) from None
        table = [[_name(p), c] for p, c in chosen]
        for i, text in zip(todo, written):
            table[i][1] = text
        return table, S.train_caption_done.format(count=len(written))

    def run(fields: dict, request: gr.Request | None, resume_run: bool):
        name_value, trigger_value, rows = fields["name"], fields["trigger"], fields["captions"]
        user = user_of(request) or ""
        caller = caller_of(request)
        try:
            run_dir, chosen = _chosen(name_value, rows, user)
            values = {k: fields[k] for k in knobs}
            req = TrainLora.build(name_value, trigger_value, [p for p, _ in chosen], [c for _, c in chosen],
                                  **{k: v for k, v in values.items() if v not in (None, "")})
        except gr.Error:
            raise
        except Exception as exc:
            raise user_error(S, exc) from None
        losses: list[tuple[int, float]] = []
        shown: list[str] = []
        state = {"step": 0, "total": req.steps, "started": time.monotonic(), "waiting": None}
        outcome: dict = {}

        def on_step(step: int, total: int, loss: float) -> None:
            losses.append((step, loss))
            state["step"], state["total"], state["waiting"] = step, total, None

        def on_wait(place: int) -> None:  # another user's run trains now; this one waits its turn
            state["waiting"] = place

        def work() -> None:
            try:
                outcome["result"] = studio.train_lora(req, run_dir, client=caller, on_step=on_step,
                                                      on_sample=lambda path, step: shown.append(str(path)),
                                                      resume=resume_run, on_wait=on_wait)
            except BaseException as exc:  # noqa: BLE001 (re-raised in the event's thread)
                outcome["error"] = exc

        thread = threading.Thread(target=contextvars.copy_context().run, args=(work,), daemon=True,
                                  name="danqing-train")
        thread.start()
        try:
            while thread.is_alive():
                thread.join(1.0)
                yield _status(S, state, losses), _curve(S, losses), list(shown)
        finally:
            if thread.is_alive():  # the page went away: stop the run (its checkpoint is kept)
                studio.stop(caller.client)
        if "error" in outcome:
            if isinstance(outcome["error"], JobCancelled):
                yield S.train_stopped_waiting, _curve(S, losses), list(shown)
                return
            raise user_error(S, outcome["error"]) from None
        result = outcome["result"]
        if result.stopped:
            text = S.train_stopped.format(step=result.steps_done, total=req.steps)
        else:
            text = S.train_finished.format(name=studio.trained_lora_name(result.path), path=_shown_path(result.path),
                                           steps=result.steps_done, minutes=f"{result.seconds / 60:.1f}")
            if result.translator:
                text += "\n\n" + S.train_captions_translated.format(family=studio.family()["loaded"]["label"],
                                                                    translator=result.translator)
            if len(result.buckets) > 1:
                text += "\n\n" + S.train_buckets_used.format(
                    groups=S.list_sep.join(S.train_bucket_group.format(w=w, h=h, n=n) for (w, h), n in result.buckets))
        # The preview sits in models/lora (not served as a file): handed over as a picture.
        preview = studio.lora_preview(studio.trained_lora_name(result.path)) if result.path else None
        yield text, _curve(S, losses), list(shown) + ([preview] if preview is not None else [])

    def train(fields: dict, request: gr.Request = None, progress=None):
        yield from run(fields, request, resume_run=False)

    def train_resume(fields: dict, request: gr.Request = None, progress=None):
        yield from run(fields, request, resume_run=True)

    # Bound by name (ui/binding.py): the event's signature names its inputs, so Gradio sees the
    # gr.Request parameter and the run belongs to the user who started it.
    components = {"name": name, "trigger": trigger, "captions": table, "preset": preset, **knobs}
    names = tuple(components)
    run_new, run_inputs = endpoint(names, components, train, doc="Train a LoRA on the pictures read for this name.")
    run_resume, _ = endpoint(names, components, train_resume, doc="Continue a stopped training run from its checkpoint.")

    preset.change(apply_preset, preset, [steps, rank, alpha, learning_rate, resolution], queue=False,
                  api_visibility="private")
    read.click(read_files, [name, files], [table, thumbs, note, captioner, caption_row, caption_hint],
               api_name="train_read", show_progress_on=note)
    caption.click(write_captions, [name, table, captioner, overwrite], [table, note], api_name="train_caption",
                  concurrency_id=GPU, concurrency_limit=GPU_LIMIT, show_progress_on=note)
    # Training is long: it runs outside the GPU concurrency group (its own job of the GPU
    # queue, giving way between steps), so a teammate's picture never waits behind it.
    # Runs of different users take turns in the studio's training line (one trains at a time,
    # a long run gives way to a waiting one every slice): no Gradio limit holds them back.
    start.click(run_new, run_inputs, [status, curve, samples], api_name="train", concurrency_limit=None,
                concurrency_id="train")
    resume.click(run_resume, run_inputs, [status, curve, samples], api_name="train_resume", concurrency_limit=None,
                 concurrency_id="train")
    def stop_run(request: gr.Request = None) -> None:
        studio.stop(caller_of(request).client)

    stop.click(stop_run, None, None, queue=False, api_name="train_stop")


def _captioner_updates(S, names: list[str]):
    """The captioner list as it is on disk now (a folder added since the page loaded shows)."""
    return (gr.update(choices=names, value=names[0] if names else None), gr.update(visible=bool(names)),
            gr.update(visible=not names))


def _path(item) -> str:
    return item if isinstance(item, str) else getattr(item, "name", None) or item.get("path")


def _shown_path(path: Path) -> str:
    """A saved file as the operator finds it: relative to where the app runs when inside it."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def _name(path: str) -> str:
    return Path(path).name


def _curve(S, losses: list[tuple[int, float]]):
    import pandas as pd

    return pd.DataFrame({S.train_axis_step: [s for s, _ in losses], S.train_axis_loss: [v for _, v in losses]})


def _status(S, state: dict, losses: list) -> str:
    step, total = state["step"], state["total"]
    if state.get("waiting") is not None:
        return S.train_waiting_turn.format(ahead=state["waiting"] + 1, step=step, total=total)
    if not step:
        return S.train_preparing
    elapsed = time.monotonic() - state["started"]
    left = elapsed / step * (total - step)
    return S.train_progress.format(step=step, total=total, loss=f"{losses[-1][1]:.4f}", elapsed=round(elapsed),
                                   left=round(left))
