"""X/Y 对比图: compare two parameters (seed, CFG, steps, sampler, LoRA weight, prompt search and
replace, base model) in one annotated
grid image, the way designers pick settings. Written against the extension interface only: a
tab whose events call the Studio's txt2img on the shared GPU queue. The logic is in grid.py.
"""

import contextvars
import logging
import queue
import threading

from .grid import AXES, GridError, run_grid

log = logging.getLogger(__name__)

TITLE = "X/Y 对比图"

TEXT = {
    "zh": {
        "tab": "X/Y 对比图",
        "intro": "选两个参数分别作为横轴和纵轴，每个格子生成一张图，拼成一张带中文标注的对比图并保存到输出文件夹。"
                 "取值用逗号分隔，整数可写范围，如 `1-4` 或 `10-30 (+10)`；采样器写名称，如 `Euler a, DDIM`。"
                 "「提示词替换」：第一个值是提示词里要找的词，每个值依次替换它，如 `竹林, 雪山, 海边`（含逗号的值用英文双引号括起来）；"
                 "「基础模型」：写模型列表里的名称，同一个模型的格子一起生成，完成后换回原来的模型。",
        "prompt": "提示词", "negative": "反向提示词", "sampler": "采样器", "steps": "采样步数", "cfg": "CFG",
        "width": "宽度", "height": "高度", "seed": "随机种子（-1 为随机，所有格子用同一个）",
        "lora": "LoRA（「LoRA 权重」轴用它）", "lora_weight": "LoRA 权重", "none": "无",
        "x_axis": "横轴（X）", "x_values": "横轴取值", "y_axis": "纵轴（Y）", "y_values": "纵轴取值",
        "run": "生成对比图", "result": "对比图", "info": "信息", "progress": "第 {k}/{n} 格", "unit": "步",
        "done": "对比图已保存：{file}（{columns} 列 × {rows} 行，{width}×{height}）。\n\n横轴：{x}\n\n纵轴：{y}",
        "models_hint": "可用的模型：{names}", "sep": "、",
        "stop": "停止", "load": "载入「创作」页的当前设置", "stopped": "已停止：对比图没有完成，已生成的格子图片已保存。",
        "axes": {"seed": "种子", "cfg": "CFG", "steps": "采样步数", "sampler": "采样器", "lora_weight": "LoRA 权重",
                 "prompt_sr": "提示词替换", "model": "基础模型"},
        "errors": {
            "unknown_axis": "不认识的参数：{axis}。",
            "bad_value": "{axis} 的取值 {value} 不合法。",
            "no_values": "请填写 {axis} 的取值。",
            "too_many_values": "{axis} 最多 {limit} 个取值。",
            "too_many_cells": "格子太多：{count} 个，最多 {limit} 个。",
            "same_axis": "横轴和纵轴不能是同一个参数。",
            "lora_needed": "「LoRA 权重」轴需要先选择一个 LoRA。",
            "sr_not_found": "提示词替换：提示词里没有「{value}」（第一个值是要被替换的词）。",
            "unknown_model": "没有这个模型：{value}。请写模型列表里的名称。",
        },
    },
    "en": {
        "tab": "X/Y grid",
        "intro": "Pick a parameter for each axis; every cell is generated and the grid is saved as one labelled image. "
                 "Separate values with commas; integers take ranges like `1-4` or `10-30 (+10)`; samplers by name.",
        "prompt": "Prompt", "negative": "Negative prompt", "sampler": "Sampler", "steps": "Steps", "cfg": "CFG",
        "width": "Width", "height": "Height", "seed": "Seed (-1 = random, the same for every cell)",
        "lora": "LoRA (for the LoRA weight axis)", "lora_weight": "LoRA weight", "none": "None",
        "x_axis": "X axis", "x_values": "X values", "y_axis": "Y axis", "y_values": "Y values",
        "run": "Make grid", "result": "Grid", "info": "Info", "progress": "cell {k}/{n}", "unit": "steps",
        "done": "Grid saved: {file} ({columns} columns × {rows} rows, {width}×{height}).\n\nX: {x}\n\nY: {y}",
        "models_hint": "Models: {names}", "sep": ", ",
        "stop": "Stop", "load": "Load the Create tab's current settings",
        "stopped": "Stopped: the grid was not finished; the cells made so far are saved.",
        "axes": {"seed": "Seed", "cfg": "CFG", "steps": "Steps", "sampler": "Sampler", "lora_weight": "LoRA weight",
                 "prompt_sr": "Prompt S/R", "model": "Base model"},
        "errors": {
            "unknown_axis": "Unknown parameter: {axis}.",
            "bad_value": "{axis}: {value} is not a valid value.",
            "no_values": "Enter values for {axis}.",
            "too_many_values": "{axis} takes at most {limit} values.",
            "too_many_cells": "Too many cells: {count}, at most {limit}.",
            "same_axis": "The X and Y axes must be different parameters.",
            "lora_needed": "The LoRA weight axis needs a LoRA: pick one first.",
            "sr_not_found": "Prompt S/R: “{value}” is not in the prompt (the first value is what gets replaced).",
            "unknown_model": "No such model: {value}. Use a name from the model list.",
        },
    },
}

__all__ = ["AXES", "GridError", "run_grid", "setup"]
# The 创作 fields the grid starts from, in the order of its own inputs.
CREATION_FIELDS = ("prompt", "negative_prompt", "sampler", "seed", "num_inference_steps", "guidance_scale",
                   "width", "height")


def setup(api) -> None:
    T = TEXT.get(api.lang, TEXT["zh"])

    def build(studio) -> None:
        import gradio as gr
        from pipelines.requests import DEFAULT_SAMPLER, SAMPLER_NAMES  # the public list of sampler names

        axis_choices = [(T["axes"][key], key) for key in AXES]
        # The 创作 panel's components (when the UI lends them): the grid starts from its settings.
        creation = {name: api.creation_field(name) for name in CREATION_FIELDS}

        def start(name: str, fallback):
            component = creation.get(name)
            value = getattr(component, "value", None)
            return fallback if value in (None, "") else value

        gr.Markdown(T["intro"])
        with gr.Row():
            with gr.Column():
                load = gr.Button(T["load"], size="sm")
                prompt = gr.Textbox(start("prompt", ""), label=T["prompt"], lines=2, elem_id="xy-prompt")
                negative = gr.Textbox(start("negative_prompt", ""), label=T["negative"])
                with gr.Row():
                    sampler = gr.Dropdown(list(SAMPLER_NAMES), value=start("sampler", DEFAULT_SAMPLER), label=T["sampler"])
                    seed = gr.Number(start("seed", -1), precision=0, label=T["seed"])
                with gr.Row():
                    steps = gr.Slider(1, 150, value=start("num_inference_steps", 20), step=1, label=T["steps"], elem_id="xy-steps")
                    cfg = gr.Slider(0, 30, value=start("guidance_scale", 7), step=0.5, label=T["cfg"])
                with gr.Row():
                    width = gr.Slider(64, 1024, value=start("width", 512), step=8, label=T["width"], elem_id="xy-width")
                    height = gr.Slider(64, 1024, value=start("height", 512), step=8, label=T["height"], elem_id="xy-height")
                with gr.Row():
                    names = [row["name"] for row in studio.loras()]
                    lora = gr.Dropdown([(T["none"], ""), *[(n, n) for n in names]], value="", label=T["lora"])
                    lora_weight = gr.Slider(-2, 2, value=0.8, step=0.05, label=T["lora_weight"])
                with gr.Row():
                    x_axis = gr.Dropdown(axis_choices, value="cfg", label=T["x_axis"])
                    x_values = gr.Textbox("4, 7, 10", label=T["x_values"])
                with gr.Row():
                    y_axis = gr.Dropdown(axis_choices, value="seed", label=T["y_axis"])
                    y_values = gr.Textbox("1, 2", label=T["y_values"], elem_id="xy-y-values")
                with gr.Row():
                    run = gr.Button(T["run"], variant="primary", elem_id="xy-run")
                    stop = gr.Button(T["stop"], variant="stop", elem_id="xy-stop")
            with gr.Column():
                result = gr.Image(label=T["result"], type="filepath", format="png", interactive=False, elem_id="xy-result")
                # What was made, in words (the API returns the grid's JSON as its second output).
                info = gr.JSON(visible=False, label=T["info"])
                summary = gr.Markdown(elem_id="xy-summary")
                gr.Markdown(T["models_hint"].format(names=T["sep"].join(c["ref"] for c in studio.model_choices())))

        def make_grid(prompt, negative, sampler, seed, steps, cfg, width, height, lora, lora_weight,
                      x_axis, x_values, y_axis, y_values, request: gr.Request = None, progress=gr.Progress()):
            """The grid, cell by cell: each finished cell is shown while the next one runs."""
            base = dict(prompt=prompt, negative_prompt=negative, sampler=sampler, seed=seed,
                        num_inference_steps=steps, guidance_scale=cfg, width=width, height=height,
                        lora=lora or "", lora_weight=lora_weight)
            # The browser session keys the stop switch (this tab's 停止 and 创作's), the user's own
            # outputs folder and turn at the GPU come with it.
            client = api.caller(request)
            cells: queue.SimpleQueue = queue.SimpleQueue()
            done, outcome = object(), {}

            def work() -> None:
                try:
                    outcome["value"] = run_grid(
                        studio, base, x_axis, x_values, y_axis, y_values, client=client,
                        on_step=lambda k, n, i, steps: progress(((k - 1) * steps + i, n * steps),
                                                                desc=T["progress"].format(k=k, n=n), unit=T["unit"]),
                        on_image=lambda path, k, n: cells.put((path, k, n)))
                except BaseException as exc:  # noqa: BLE001 (answered in the event's thread)
                    outcome["error"] = exc
                finally:
                    cells.put(done)

            threading.Thread(target=contextvars.copy_context().run, args=(work,), daemon=True, name="xy-grid").start()
            try:
                while (item := cells.get()) is not done:
                    path, k, n = item  # k/n shows in the progress line (on_cell); the cell here
                    yield str(path), gr.update()
            finally:
                if not outcome:  # Gradio closed the event early (the page went away)
                    studio.stop(client.client)
            error = outcome.get("error")
            if error is not None and getattr(error, "code", None) == "cancelled":
                gr.Warning(T["stopped"])
                return
            if isinstance(error, GridError):
                fields = {**error.fields}
                if "axis" in fields:
                    fields["axis"] = T["axes"].get(fields["axis"], fields["axis"])
                raise gr.Error(T["errors"][error.code].format(**fields), print_exception=False)
            if error is not None:
                raise gr.Error(api.error_message(error), print_exception=False)
            path, meta = outcome["value"]
            yield str(path), meta

        inputs = [prompt, negative, sampler, seed, steps, cfg, width, height, lora, lora_weight,
                  x_axis, x_values, y_axis, y_values]
        run.click(make_grid, inputs, [result, info], concurrency_id=api.concurrency_id, concurrency_limit=api.concurrency_limit,
                  api_name="xy_grid", show_progress_on=summary)
        def stop_grid(request: gr.Request = None) -> None:
            studio.stop(api.caller(request).client)

        stop.click(stop_grid, None, None, queue=False, api_visibility="private")

        def describe(meta):
            if not isinstance(meta, dict) or "file" not in meta:
                return ""
            return T["done"].format(file=meta["file"], columns=meta["columns"], rows=meta["rows"],
                                    width=meta["size"][0], height=meta["size"][1],
                                    x=T["sep"].join(meta["x"]["labels"]), y=T["sep"].join(meta["y"]["labels"]))

        info.change(describe, info, summary, queue=False, api_visibility="private")
        own = dict(zip(CREATION_FIELDS, [prompt, negative, sampler, seed, steps, cfg, width, height]))
        lent = [name for name in CREATION_FIELDS if creation.get(name) is not None]
        if lent:
            load.click(lambda *values: values, [creation[name] for name in lent], [own[name] for name in lent],
                       queue=False, api_visibility="private")
        else:
            load.visible = False

    api.add_tab(T["tab"], build)
