"""Every string a user reads, in one place: Chinese first, English second.

Both languages must define exactly the same keys (checked at import, so a missing translation
fails at start-up, not in front of a user), and the UI reads them as attributes, so a typo in
a key fails when the UI is built. Error codes raised by the engine map to sentences here.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

ZH = dict(
    cli_listen_needs_auth=(
        "拒绝启动：监听局域网/公网地址时必须设置登录，请加上 --auth 用户名:密码（或明知风险时加 --insecure-no-auth）。\n"
        "Refusing to start: listening beyond localhost needs --auth USER:PASS (or --insecure-no-auth)."
    ),
    cli_bad_auth="--auth 的格式应为 用户名:密码，多个用逗号分隔（USER:PASS,USER2:PASS2）。",
    title="丹青 Danqing · 中文 AI 绘画工作室",
    subtitle="输入中文提示词，生成图片。所有图片自动保存，并带有生成参数与 AI 生成标识。",
    demo_banner=(
        "⚠️ **演示模式**：当前使用本机生成的随机权重微型模型，生成的图片是随机噪声，"
        "仅用于体验界面和运行测试。把真实模型放进 `models/checkpoints/` 后不带 `--demo` 重新启动即可。"
    ),
    missing_model_banner=(
        "⚠️ **未找到模型** `{model}`：本机没有它的文件，也无法联网下载。"
        "请把 diffusers 格式的模型文件夹放到 `{folder}`（或放入 HuggingFace 缓存；支持 `HF_ENDPOINT` 镜像），然后刷新模型列表。"
        "在此之前先用演示模型（随机噪声）体验界面。"
    ),
    download_banner="ℹ️ 模型 `{model}` 尚未下载，首次生成时会自动下载（可在进度条查看进度）。",
    model_label="基础模型",
    model_local="{name}（本地）",
    model_remote="{name}（需下载）",
    refresh="🔄 刷新",
    model_switched="已切换到模型：{name}",
    tab_txt2img="文生图",
    tab_pnginfo="图片信息",
    tab_gallery="图库",
    tab_system="系统信息",
    prompt_label="提示词",
    prompt_placeholder="例如：竹林里的大熊猫，国风，水墨画，高清",
    negative_label="反向提示词",
    negative_placeholder="不希望出现的内容，例如：模糊，低质量，水印，文字",
    sampler_label="采样器",
    steps_label="采样步数",
    cfg_label="提示词引导系数（CFG）",
    width_label="宽度",
    height_label="高度",
    seed_label="随机种子（-1 为随机）",
    random_seed="🎲 随机",
    reuse_seed="♻️ 复用上次种子",
    batch_label="每次生成张数",
    generate="生成",
    stop="停止",
    gallery_label="生成结果",
    info_label="生成信息",
    progress_loading="正在加载模型……",
    progress_sampling="采样中",
    progress_saving="正在保存图片……",
    pnginfo_upload="上传图片（PNG）",
    pnginfo_text="图片参数",
    pnginfo_none="这张图片没有生成参数。",
    send_to_txt2img="发送到文生图",
    gallery_recent="最近生成的图片",
    system_refresh="刷新系统信息",
    stopped="已停止当前任务。",
    sampler_labels={
        "DPM++ 2M Karras": "DPM++ 2M Karras（推荐：质量与速度均衡）",
        "DPM++ 2M": "DPM++ 2M",
        "DPM++ 2M SDE Karras": "DPM++ 2M SDE Karras（细节丰富，较慢）",
        "Euler a": "Euler a（祖先采样，变化多）",
        "Euler": "Euler（稳定）",
        "Heun": "Heun（精细，速度减半）",
        "LMS": "LMS",
        "DDIM": "DDIM（经典）",
        "PNDM": "PNDM（PAI 默认）",
        "UniPC": "UniPC（少步数也清晰）",
        "LCM": "LCM（需要 LCM 模型，4–8 步）",
    },
)

EN = dict(
    cli_listen_needs_auth="Refusing to start: listening beyond localhost needs --auth USER:PASS (or --insecure-no-auth).",
    cli_bad_auth="--auth must be USER:PASS, several separated by commas (USER:PASS,USER2:PASS2).",
    title="Danqing · Chinese-first AI image studio",
    subtitle="Type a prompt to make images. Every image is saved with its parameters and an AI-generated label.",
    demo_banner=(
        "⚠️ **Demo mode**: tiny random-weight models generated on this machine; images are noise. "
        "Put a real model in `models/checkpoints/` and restart without `--demo`."
    ),
    missing_model_banner=(
        "⚠️ **Model not found** `{model}`: no local files and no network. Put a diffusers model folder in "
        "`{folder}` (or the HuggingFace cache; `HF_ENDPOINT` mirrors work) and refresh the model list. "
        "Until then the demo model (noise) is active."
    ),
    download_banner="ℹ️ Model `{model}` is not downloaded yet; the first generation downloads it (see the progress bar).",
    model_label="Base model",
    model_local="{name} (local)",
    model_remote="{name} (download)",
    refresh="🔄 Refresh",
    model_switched="Switched to model: {name}",
    tab_txt2img="Text to image",
    tab_pnginfo="PNG info",
    tab_gallery="Gallery",
    tab_system="System",
    prompt_label="Prompt",
    prompt_placeholder="e.g. a panda in a bamboo forest, ink painting",
    negative_label="Negative prompt",
    negative_placeholder="what to avoid, e.g. blurry, low quality, watermark",
    sampler_label="Sampler",
    steps_label="Steps",
    cfg_label="CFG scale",
    width_label="Width",
    height_label="Height",
    seed_label="Seed (-1 = random)",
    random_seed="🎲 Random",
    reuse_seed="♻️ Reuse last seed",
    batch_label="Images per run",
    generate="Generate",
    stop="Stop",
    gallery_label="Results",
    info_label="Generation info",
    progress_loading="Loading model…",
    progress_sampling="Sampling",
    progress_saving="Saving…",
    pnginfo_upload="Upload an image (PNG)",
    pnginfo_text="Parameters",
    pnginfo_none="This image carries no generation parameters.",
    send_to_txt2img="Send to text-to-image",
    gallery_recent="Recent images",
    system_refresh="Refresh",
    stopped="The job was stopped.",
    sampler_labels={name: name for name in ZH["sampler_labels"]},
)

ERRORS_ZH = {
    "not_an_integer": "参数 {name} 必须是整数（收到 {value}）。",
    "not_a_number": "参数 {name} 必须是有限的数字（收到 {value}）。",
    "out_of_range": "参数 {name} 超出范围：应在 {low} 到 {high} 之间（收到 {value}）。",
    "not_text": "参数 {name} 必须是文字。",
    "text_too_long": "{name} 太长：{length} 个字符，最多 {limit} 个。",
    "empty_prompt": "请输入提示词。",
    "size_not_multiple_of_8": "宽度和高度必须是 8 的倍数（收到 {width}×{height}）。",
    "job_too_large": "一次生成的像素太多（{width}×{height}×{images} 张），请减小尺寸或张数。",
    "unknown_sampler": "不认识的采样器：{value}。",
    "unknown_model": "没有这个模型：{name}。请从列表中选择。",
    "bad_model_name": "模型名称不合法（{kind}）。",
    "unknown_model_name": "在 {kind} 文件夹里没有找到：{name}。",
    "model_missing_offline": "模型 {name} 不在本机，且当前不允许联网下载。请把模型放到 models/checkpoints/。",
    "model_download_failed": "模型 {name} 下载失败：请检查网络，或设置 HF_ENDPOINT 使用镜像；也可以手动放到 models/checkpoints/。之前的模型仍在使用。",
    "model_load_failed": "模型 {name} 加载失败，之前的模型仍在使用。详情见服务器日志。",
    "model_file_corrupt": "模型 {name} 的文件损坏（可能没下载完整），之前的模型仍在使用。",
    "bad_device": "不支持的设备：{value}。",
    "bad_dtype": "不支持的精度：{value}（可选 fp32、fp16、bf16）。",
    "nan_output": "生成结果出现数值溢出（NaN），已用 fp32 重试仍失败。请换一个种子或降低 CFG。",
    "out_of_memory": "显存/内存不足：请减小尺寸或张数后重试。",
    "cancelled": "已停止当前任务。",
    "internal": "生成失败：服务器内部错误，已记录日志。请重试。",
}

ERRORS_EN = {
    "not_an_integer": "{name} must be an integer (got {value}).",
    "not_a_number": "{name} must be a finite number (got {value}).",
    "out_of_range": "{name} is out of range: {low} to {high} (got {value}).",
    "not_text": "{name} must be text.",
    "text_too_long": "{name} is too long: {length} characters, at most {limit}.",
    "empty_prompt": "Please enter a prompt.",
    "size_not_multiple_of_8": "Width and height must be multiples of 8 (got {width}×{height}).",
    "job_too_large": "Too many pixels in one job ({width}×{height}×{images}); lower the size or count.",
    "unknown_sampler": "Unknown sampler: {value}.",
    "unknown_model": "No such model: {name}. Pick one from the list.",
    "bad_model_name": "Invalid model name ({kind}).",
    "unknown_model_name": "Not found in the {kind} folder: {name}.",
    "model_missing_offline": "Model {name} is not on this machine and downloads are off. Put it in models/checkpoints/.",
    "model_download_failed": "Downloading {name} failed: check the network or set HF_ENDPOINT to a mirror. The previous model stays active.",
    "model_load_failed": "Loading {name} failed; the previous model stays active. See the server log.",
    "model_file_corrupt": "The files of {name} are corrupt (incomplete download?); the previous model stays active.",
    "bad_device": "Unsupported device: {value}.",
    "bad_dtype": "Unsupported dtype: {value} (fp32, fp16, bf16).",
    "nan_output": "The image overflowed to NaN even in fp32. Try another seed or a lower CFG.",
    "out_of_memory": "Out of memory: lower the size or the number of images.",
    "cancelled": "The job was stopped.",
    "internal": "Generation failed with an internal error (logged). Please retry.",
}

if ZH.keys() != EN.keys() or ERRORS_ZH.keys() != ERRORS_EN.keys():
    raise ImportError("ui.strings: the Chinese and English tables define different keys")
if ZH["sampler_labels"].keys() != EN["sampler_labels"].keys():
    raise ImportError("ui.strings: sampler labels differ between languages")

LANGUAGES = {"zh": (ZH, ERRORS_ZH), "en": (EN, ERRORS_EN)}


def load(lang: str | None = None) -> SimpleNamespace:
    """The strings of one language as attributes (``S.generate``); unknown keys raise."""
    table, errors = LANGUAGES.get((lang or os.environ.get("DANQING_LANG") or "zh").lower()[:2], LANGUAGES["zh"])
    return SimpleNamespace(**table, errors=errors)


def error_text(strings: SimpleNamespace, code: str, fields: dict | None = None) -> str:
    template = strings.errors.get(code, strings.errors["internal"])
    try:
        return template.format(**(fields or {}))
    except (KeyError, IndexError):
        return template
