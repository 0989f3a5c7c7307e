"""Helpers of the browser tests: Debian's Chromium driven by playwright (its own browser
download cannot work offline), the English-word check of a designer's walk, the check that a
picture is drawn whole, the progress line as the page shows it, logging in through the page,
the pixels a picture on the page really shows, a ControlNet run from its tab."""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")


def launch_chromium(p):
    return p.chromium.launch(
        executable_path=CHROMIUM,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
    )


def designer_page(url: str):
    """A zh-CN page of the app at ``url`` in headless Chromium, for a module's walk (a generator:
    use it as a fixture body with ``yield from``)."""
    with playwright.sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, locale="zh-CN")
        page.goto(url, wait_until="networkidle")
        yield page
        browser.close()


# A designer's walk (issue 14): every screen read for English words a Chinese user would meet.
VISIBLE_TEXT = """() => {
  const parts = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode, el = node.parentElement;
    if (!el || !node.textContent.trim() || el.closest('code, pre, script, style')) continue;
    const style = getComputedStyle(el);
    if (style.visibility === 'hidden' || style.display === 'none' || parseFloat(style.fontSize) === 0) continue;
    if (!el.getClientRects().length) continue;
    parts.push(node.textContent);
  }
  return parts.join(' ');
}"""
# Names a Chinese designer reads as names: the product, models, samplers, file formats, units.
ALLOWED_WORDS = {
    "Danqing", "API", "CFG", "LoRA", "ESRGAN", "DeepCache", "Civitai", "A1111", "ControlNet", "Canny",
    "DPM++", "Karras", "SDE", "Euler", "DDIM", "PNDM", "UniPC", "LCM", "Heun", "LMS", "PNG", "JPEG", "WebP",
    "BMP", "TIFF", "GIF", "Excel", "WPS", "JSON", "csv", "styles.csv", "TAESD", "cpu", "cuda", "fp32", "fp16",
    "sdpa", "torch", "torch.compile", "channels_last", "QKV", "VAE", "CLIP", "EasyNegative", "HuggingFace", "ModelScope", "SHA-256", "SD1",
    "U-Net", "rank", "alpha", "min-SNR", "MB", "GB", "PAI", "Gradio", "MCP", "BLIP", "Florence-2", "Qwen2-VL",
    "TCD", "Hyper-SD", "LCM-LoRA", "TCD-LoRA", "SGM", "Uniform", "GPU", "Transformer",
    "SDXL", "SDXL-Lightning", "Lightning", "DMD2", "union", "Kolors", "Z-Image", "Z-Image-Turbo",
    "GGUF", "fp8", "bf16", "Qwen3",
    # a folder the designer is told to put files in: models/captioners/, a file's ending
    "models", "captioners", "translators", "prompters", "lora", "safetensors",
}
# Gradio's status-line literals ("queue: 1/1 |", "processing |"): its front end has no hook for
# them (README, 使用 / Usage, lists what stays English); shown only while an event waits.
GRADIO_LITERALS = {"queue", "processing"}
# The demo bundle's file names (models, VAE, embeddings) are what the user put there, not UI text.
MODEL_NAME = re.compile(r"^(danqing-demo-[a-z]+(-[a-z]+)*|demo-[a-z]+(-[a-z]+)*|sd15-only|p\d+|png|txt|lcm-lora-sdv1-5-tiny"
                        r"|pytorch_lora_weights|Hyper-SD15-2steps-lora-tiny|RealESRGAN_x[24]plus-tiny|realesr-general-x4v3-tiny|xy"
                        r"|sdxl_lightning_4step_lora-tiny|danqing-demo-qwen-prompter|danqing-demo-opus-mt-zh-en)"
                        r"(-Q8_0)?(\.(safetensors|pt|pth|bin|png|txt|gguf))?$")


# The progress line is the bar's own label, drawn by CSS (ui/layout.CLEAN_PROGRESS).
PROGRESS_LINE = """() => {
  const bar = document.querySelector('#result-summary .progress-bar-wrap');
  return bar ? bar.getAttribute('aria-label') || '' : '';
}"""


def english_words(page) -> set[str]:
    text = page.evaluate(VISIBLE_TEXT)
    words = set(re.findall(r"[A-Za-z][A-Za-z0-9+._\-]{2,}", text))
    return {w for w in words if w.strip(".-") not in ALLOWED_WORDS | GRADIO_LITERALS and not MODEL_NAME.match(w)}




# Every picture under ``selector``: its file's own size, the box it is drawn in (the picture
# inside an object-fit box), the part of that box not cut off by an ancestor, and the boxes
# around it that scroll.
WHOLE = """(selector) => {
  const out = [];
  for (const img of document.querySelectorAll(selector + ' img')) {
    const r = img.getBoundingClientRect();
    if (!r.width || !r.height || !img.naturalWidth) continue;
    const fit = getComputedStyle(img).objectFit;
    let w = r.width, h = r.height;
    if (fit === 'contain' || fit === 'scale-down') {
      const k = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
      w = img.naturalWidth * k; h = img.naturalHeight * k;
    } else if (fit === 'cover') {
      const k = Math.max(r.width / img.naturalWidth, r.height / img.naturalHeight);
      w = img.naturalWidth * k; h = img.naturalHeight * k;
    }
    let top = r.top, bottom = r.bottom, left = r.left, right = r.right;
    const scrolling = [];
    for (let e = img.parentElement; e && e !== document.body; e = e.parentElement) {
      const s = getComputedStyle(e);
      if (s.overflowY !== 'visible' || s.overflowX !== 'visible') {
        const b = e.getBoundingClientRect();
        top = Math.max(top, b.top); bottom = Math.min(bottom, b.bottom);
        left = Math.max(left, b.left); right = Math.min(right, b.right);
      }
      if ((/(auto|scroll)/.test(s.overflowY) && e.scrollHeight > e.clientHeight + 1) ||
          (/(auto|scroll)/.test(s.overflowX) && e.scrollWidth > e.clientWidth + 1)) scrolling.push(e.className);
    }
    out.push({natural: [img.naturalWidth, img.naturalHeight], drawn: [w, h], box: [r.width, r.height],
              visible: [right - left, bottom - top], scrolling});
  }
  return out;
}"""


def drawn_whole(page, selector: str) -> list[dict]:
    """The pictures under ``selector`` that are not drawn whole: cut off, scrolled inside a box,
    or drawn in other proportions than their own (within a pixel)."""
    bad = []
    for p in page.evaluate(WHOLE, selector):
        (nw, nh), (w, h), (bw, bh), (vw, vh) = p["natural"], p["drawn"], p["box"], p["visible"]
        wrong_shape = abs(w / h - nw / nh) > max(1 / h, 1 / w) * (nw / nh) + 0.01
        if wrong_shape or vw < bw - 1 or vh < bh - 1 or p["scrolling"]:
            bad.append(p)
    return bad


def log_in(page, url: str, user: str, password: str) -> None:
    """Through the login page, as a person does."""
    page.goto(url, wait_until="networkidle")
    page.get_by_label("用户名").fill(user)
    page.get_by_label("密码").fill(password)
    page.get_by_role("button", name="登录").click()
    page.get_by_role("tab", name="创作").first.wait_for(timeout=60_000)
    page.wait_for_timeout(1000)  # Gradio applies its translations after the first paint


def fill_and_generate(page, prompt: str, width: int = 64, height: int = 64, steps: int = 2) -> None:
    """Type a prompt and a size in 创作 as a designer does, click 生成 and wait for the summary."""
    page.get_by_label("提示词", exact=True).first.fill(prompt)
    page.get_by_label("宽度").first.fill(str(width))
    page.get_by_label("高度").first.fill(str(height))
    page.get_by_label("采样步数").first.fill(str(steps))
    page.get_by_label("采样步数").first.press("Tab")
    page.click("#generate")
    page.locator("#result-summary").get_by_text("种子").first.wait_for(timeout=90_000)


def send_to_inpaint_and_paint(page, start: float = 0.45, end: float = 0.55) -> None:
    """发送到局部重绘 from the result on screen, then one brush stroke across the canvas from
    ``start`` to ``end`` (fractions of its width and height), as a designer paints a mask."""
    page.get_by_role("tab", name="创作").first.click()
    page.click("#result-to-inpaint")
    page.locator("#inpaint-editor canvas").first.wait_for(timeout=30_000)
    page.wait_for_timeout(1500)
    page.locator("#inpaint-editor button[aria-label='画笔']").click()
    box = page.locator("#inpaint-editor canvas").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] * start, box["y"] + box["height"] * start)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * end, box["y"] + box["height"] * end, steps=8)
    page.mouse.up()


def load_training_pictures(page, name: str, trigger: str, files: list[str], last: str) -> None:
    """训练 LoRA: the LoRA's name and trigger word typed, the pictures (and .txt captions)
    uploaded, 读取图片, until the table lists ``last``."""
    page.get_by_role("tab", name="训练 LoRA").first.click()
    page.locator("#train-name textarea, #train-name input").first.fill(name)
    page.locator("#train-trigger textarea, #train-trigger input").first.fill(trigger)
    page.locator("#train-files input[type=file]").set_input_files(files)
    page.wait_for_timeout(3000)  # the uploads finish
    page.get_by_role("button", name="读取图片").click()
    page.locator("#train-captions").get_by_text(last).wait_for(timeout=30_000)


def train_until_done(page, knobs: dict[str, str], log: Path, shot: Path) -> None:
    """高级's knobs typed (label → value), 开始训练, until 训练完成 (else the status, the toasts
    and the app's log tail, with a screenshot at ``shot``)."""
    page.get_by_text("高级").first.click()
    for label, value in knobs.items():
        box = page.get_by_label(label).first
        for _ in range(5):  # a slider's box takes a typed value once it has rendered
            box.fill(value)
            box.press("Enter")
            page.wait_for_timeout(300)
            if box.input_value() == value:
                break
        assert box.input_value() == value, (label, box.input_value())
    page.wait_for_load_state("networkidle")
    page.locator("#train-start").click()
    try:
        page.locator("#train-status").get_by_text("训练完成").wait_for(timeout=240_000)
    except Exception:
        page.screenshot(path=str(shot), full_page=True)
        toasts = page.locator(".toast-body").all_inner_texts()
        raise AssertionError(f"status: {page.locator('#train-status').inner_text()!r}; toasts: {toasts}; "
                             f"log tail: {log.read_text(errors='replace')[-1500:]}") from None


def shooter(prefix: str):
    """``shot(page, tmp_path, name)``: a full-page screenshot named ``<prefix>-<name>.png`` in
    the test's folder, or in DANQING_SHOTS when set (kept for a person to look at)."""
    def shot(page, tmp_path, name: str) -> None:
        folder = Path(os.environ.get("DANQING_SHOTS") or tmp_path)
        page.screenshot(path=str(folder / f"{prefix}-{name}.png"), full_page=True)

    return shot


def use_edited_english(page, english: str, words: str) -> None:
    """The translator's English under a result, edited as a designer does: type ``english``,
    用这段英文, 生成 again, until the summary shows ``words`` of it."""
    page.locator("#english-prompt textarea").fill(english)
    page.click("#english-use")
    page.get_by_text("已记住").first.wait_for(timeout=30_000)
    page.click("#generate")
    page.wait_for_timeout(1000)
    page.locator("#result-summary").get_by_text(words).first.wait_for(timeout=120_000)


def sent_pixels(page, button: str, target: str) -> np.ndarray:
    """Click a 发送到… ``button``; the pixels the picture box ``target`` then shows."""
    page.click(button)
    page.locator(f"{target} img").first.wait_for(timeout=30_000)
    page.wait_for_timeout(500)
    return shown_pixels(page, f"{target} img")


def shown_pixels(page, selector: str) -> np.ndarray:
    """The pixels of the picture an <img> on the page shows, fetched by the page itself."""
    src = page.locator(selector).first.get_attribute("src")
    data = page.evaluate("async (u) => Array.from(new Uint8Array(await (await fetch(u)).arrayBuffer()))", src)
    return np.asarray(Image.open(io.BytesIO(bytes(data))).convert("RGB"))


def control_with(page, image_path, model: str, end: str | None = None) -> None:
    """线稿控制 as a designer does it: upload the picture, pick the ControlNet (and its 结束介入
    when ``end`` is given), 用线稿生成, and wait until the summary names the ControlNet."""
    page.get_by_role("tab", name="线稿控制").first.click()
    page.locator("#generate-canny").wait_for(timeout=30_000)
    tab = page.locator("#generate-canny").locator("xpath=ancestor::div[contains(@class,'tabitem')]")
    tab.locator("input[type=file]").first.set_input_files(str(image_path))
    page.get_by_label("ControlNet 模型").first.click()
    page.get_by_role("option", name=model, exact=True).click()
    page.wait_for_timeout(500)
    if end is not None:
        box = tab.get_by_label("结束介入（步数比例）").first
        box.fill(end)
        box.press("Enter")
        page.wait_for_timeout(300)
    page.click("#generate-canny")
    page.locator("#result-summary").get_by_text(f"ControlNet：{model}").first.wait_for(timeout=120_000)
