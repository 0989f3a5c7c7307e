"""The UI as a person uses it: headless Chromium (Debian's `chromium`, driven by playwright with
its executable_path — playwright's own browser download cannot work offline). Skips with the
reason when no browser or no playwright is installed; .ci/run installs both."""

import re
import shutil
import time

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium)")


@pytest.fixture(scope="module")
def hub():
    """HuggingFace's routes on loopback (tests/hub_server.py), the app's HF_ENDPOINT."""
    from hub_server import Hub

    server = Hub()
    server.repos["someone/ink-lora"] = {"ink_style.safetensors": b"\0" * 300_000, "README.md": b"# ink"}
    yield server
    server.close()


@pytest.fixture(scope="module")
def browser_app(demo_models, demo_cache, tmp_path_factory, hub):
    """An app of its own: no job left by other tests' clients can be queued ahead of the page."""
    from conftest import LaunchedApp

    app = LaunchedApp(["--demo"], demo_cache, tmp_path_factory.mktemp("browser") / "outputs",
                      env={"HF_ENDPOINT": hub.url})
    yield app
    app.stop()


@pytest.fixture(scope="module")
def page(browser_app):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, locale="zh-CN")
        page.goto(browser_app.url, wait_until="networkidle")
        yield page
        browser.close()


def test_chinese_labels_prompt_generate_and_see_an_image(page):
    # The page builds itself after its scripts load: on a busy machine that takes a while.
    page.get_by_role("tab", name="创作").first.wait_for(timeout=60_000)
    for label in ("创作", "文生图", "线稿控制", "深度控制", "超分辨率", "图片信息", "系统信息"):
        assert page.get_by_role("tab", name=label).count() >= 1
    assert page.get_by_text("演示模式").count() >= 1
    page.get_by_label("提示词", exact=True).first.fill("竹林里的大熊猫，水墨画")
    page.get_by_label("宽度").first.fill("64")
    page.get_by_label("高度").first.fill("64")
    page.get_by_label("采样步数").first.fill("2")
    page.click("#generate")
    page.wait_for_selector("#gallery img", timeout=90_000)
    assert page.locator("#gallery img").count() >= 1


def test_a_144_megapixel_upload_shows_the_error(page, tmp_path):
    # A tiny PNG whose header declares 12000 x 12000: refused before decoding, message shown.
    path = tmp_path / "bomb.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    import struct
    import zlib

    data[16:24] = struct.pack(">II", 12000, 12000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    page.get_by_role("tab", name="图片信息").click()
    page.locator("#png-upload input[type=file]").set_input_files(str(path))
    page.get_by_text("图片太大").first.wait_for(timeout=30_000)
    # Said once, and the refused file does not stay as a broken picture: the input is empty again.
    page.wait_for_timeout(1500)
    assert page.locator(".toast-body", has_text="图片太大").count() == 1
    assert page.locator("#png-upload img").count() == 0


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
    "TCD", "Hyper-SD", "LCM-LoRA", "TCD-LoRA", "SGM", "Uniform",
    # a folder the designer is told to put files in: models/captioners/, a file's ending
    "models", "captioners", "lora", "safetensors",
}
# Gradio's status-line literals ("queue: 1/1 |", "processing |"): its front end has no hook for
# them (README, 使用 / Usage, lists what stays English); shown only while an event waits.
GRADIO_LITERALS = {"queue", "processing"}
# The demo bundle's file names (models, VAE, embeddings) are what the user put there, not UI text.
MODEL_NAME = re.compile(r"^(danqing-demo-[a-z]+(-[a-z]+)*|demo-[a-z]+|sd15-only|p\d+|png|txt|lcm-lora-sdv1-5-tiny"
                        r"|pytorch_lora_weights|Hyper-SD15-2steps-lora-tiny)(\.(safetensors|pt|bin|png|txt))?$")


# The progress line is the bar's own label, drawn by CSS (ui/layout.CLEAN_PROGRESS).
PROGRESS_LINE = """() => {
  const bar = document.querySelector('#result-summary .progress-bar-wrap');
  return bar ? bar.getAttribute('aria-label') || '' : '';
}"""


def english_words(page) -> set[str]:
    text = page.evaluate(VISIBLE_TEXT)
    words = set(re.findall(r"[A-Za-z][A-Za-z0-9+._\-]{2,}", text))
    return {w for w in words if w.strip(".-") not in ALLOWED_WORDS | GRADIO_LITERALS and not MODEL_NAME.match(w)}


def test_a_designers_walk_reads_chinese_and_the_grid_stops(page, tmp_path):
    page.reload(wait_until="networkidle")
    page.get_by_role("tab", name="创作").first.wait_for(timeout=60_000)
    page.wait_for_timeout(1000)  # Gradio applies its translations after the first paint
    assert english_words(page) == set()
    # 1. 生成: the live preview and the progress line are on screen together.
    page.get_by_label("提示词", exact=True).first.fill("竹林里的大熊猫，水墨画")
    page.get_by_label("宽度").first.fill("256")
    page.get_by_label("高度").first.fill("256")
    page.get_by_label("采样步数").first.fill("40")
    page.click("#generate")
    together = False
    deadline = time.time() + 90
    while time.time() < deadline and not together:
        preview = page.locator("#gallery img").count() > 0
        line = "约剩" in page.evaluate(PROGRESS_LINE) and re.search(r"第 \d+/40 步", page.evaluate(PROGRESS_LINE))
        together = preview and line
        if together:
            page.screenshot(path=str(tmp_path / "1-preview-and-progress.png"))
            assert english_words(page) == set()
        page.wait_for_timeout(150)
    assert together, "the preview and the progress line were never on screen at once"
    # 2. The result reads in Chinese; the A1111 text is one click away.
    page.locator("#result-summary").get_by_text("种子").first.wait_for(timeout=90_000)
    summary = page.locator("#result-summary").inner_text()
    assert "256×256" in summary and "40 步" in summary and "用时" in summary
    assert english_words(page) == set()
    # 3. 历史 opens filled, each image captioned with when it was made and its seed.
    page.get_by_role("tab", name="历史").first.click()
    page.locator("#recent").get_by_text(re.compile(r"\d\d-\d\d \d\d:\d\d · 种子 \d+")).first.wait_for(timeout=30_000)
    assert english_words(page) == set()
    # Searched by two characters of the prompt; the picked image's parameters read in Chinese.
    page.locator("#history-search textarea, #history-search input").first.fill("熊猫")
    page.locator("#history-go").click()
    page.locator("#history-page").get_by_text("共").wait_for(timeout=30_000)
    page.locator("#recent .thumbnail-item").first.click()
    page.locator("#history-detail").get_by_text("竹林里的大熊猫").first.wait_for(timeout=30_000)
    assert "提示词" in page.locator("#history-detail").inner_text()
    assert english_words(page) == set(), english_words(page)
    # 4. X/Y 对比图 from 创作's settings, stopped within a few seconds of 停止.
    page.get_by_role("tab", name="X/Y 对比图").first.click()
    page.get_by_role("button", name="载入「创作」页的当前设置").click()
    page.wait_for_timeout(500)
    page.click("#xy-run")
    page.wait_for_timeout(3000)
    started = time.time()
    page.click("#xy-stop")
    page.get_by_text("已停止").first.wait_for(timeout=30_000)
    assert time.time() - started < 10
    assert english_words(page) == set()


def test_fast_mode_sets_a_few_step_lora_and_gives_the_settings_back(page, tmp_path):
    """极速 on: the demo's LCM-LoRA (found by its keys) in a LoRA slot, LCM, 4 steps, CFG 1, and a
    Chinese note saying so; a generation with them; off: 20 steps and the old sampler back."""
    page.get_by_role("tab", name="创作").first.click()
    steps = page.get_by_label("采样步数").first
    steps.fill("20")
    steps.press("Enter")
    page.locator("#fast-mode input").check()
    page.locator("#fast-note").get_by_text("极速已开启").wait_for(timeout=30_000)
    note = page.locator("#fast-note").inner_text()
    assert "LCM-LoRA" in note and "按权重结构识别" in note and "4 步" in note
    assert page.get_by_label("采样步数").first.input_value() == "4"
    assert page.get_by_text("LoRA 模型 · 已启用：pytorch_lora_weights ×1").count() >= 1
    page.get_by_label("提示词", exact=True).first.fill("竹林里的大熊猫，水墨画")
    page.click("#generate")
    page.locator("#result-summary").get_by_text("4 步").first.wait_for(timeout=90_000)
    page.screenshot(path=str(tmp_path / "fast-on.png"))
    assert english_words(page) == set(), english_words(page)
    page.locator("#fast-mode input").uncheck()
    page.locator("#fast-note").get_by_text("已关闭极速").wait_for(timeout=30_000)
    page.wait_for_timeout(500)
    assert page.get_by_label("采样步数").first.input_value() == "20"
    assert page.get_by_text("LoRA 模型 · 已启用").count() == 0


def test_editing_walk_img2img_then_paint_and_inpaint(page, tmp_path):
    """图生图 from an upload, its result sent to 局部重绘, a brush stroke, 重绘: each screen in Chinese."""
    source = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(1).random((96, 128, 3)) * 255).astype("uint8")).save(source)
    page.reload(wait_until="networkidle")
    page.get_by_role("tab", name="创作").first.wait_for(timeout=60_000)
    page.get_by_label("提示词", exact=True).first.fill("山水画，远山，小船")
    page.get_by_label("采样步数").first.fill("4")
    # 1. 图生图: upload, the panel's size from the picture, run.
    page.get_by_role("tab", name="图生图").first.click()
    page.locator("#img2img-image input[type=file]").set_input_files(str(source))
    page.get_by_role("button", name="尺寸取自原图").click()
    page.wait_for_timeout(800)
    assert page.get_by_label("宽度").first.input_value() == "128"
    page.click("#generate-img2img")
    page.locator("#result-summary").get_by_text("图生图：重绘幅度").first.wait_for(timeout=90_000)
    assert english_words(page) == set()
    # 2. The result to 局部重绘, a stroke with the brush, 重绘.
    page.locator("#gallery img").first.click()
    page.click("#result-to-inpaint")
    page.locator("#inpaint-editor canvas").first.wait_for(timeout=30_000)
    page.wait_for_timeout(1500)
    page.locator("#inpaint-editor button[aria-label='画笔']").click()
    box = page.locator("#inpaint-editor canvas").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.45)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.55, box["y"] + box["height"] * 0.55, steps=8)
    page.mouse.up()
    page.click("#generate-inpaint")
    page.locator("#result-summary").get_by_text("局部重绘：重绘幅度").first.wait_for(timeout=90_000)
    page.screenshot(path=str(tmp_path / "inpainted.png"))
    assert english_words(page) == set()
    # 3. 扩图 and 文生图 with 高清修复 read in Chinese too.
    page.get_by_role("tab", name="扩图").first.click()
    page.locator("#hires-pass input").check()
    page.wait_for_timeout(500)
    assert page.get_by_label("修复重绘幅度").count() >= 1
    assert english_words(page) == set()


def test_model_library_walk_single_file_vae_embeddings_and_a_download(page, browser_app):
    """A designer picks the A1111 single file and the external VAE, uses an embedding and clip
    skip, then downloads a LoRA from the mirror: everything reads Chinese, the infotext says
    what was used, the file lands in models/lora."""
    page.reload(wait_until="networkidle")
    page.get_by_role("tab", name="创作").first.wait_for(timeout=60_000)
    page.get_by_label("基础模型").first.click()
    page.get_by_role("option", name="danqing-demo-single.safetensors（本地）").click()
    page.get_by_text("已切换到模型").first.wait_for(timeout=60_000)
    page.locator("#model-card").get_by_text("触发词：水墨").wait_for(timeout=30_000)  # its A1111 card
    page.get_by_label("外挂 VAE").first.click()
    page.get_by_role("option", name="danqing-demo-vae.safetensors").click()
    page.get_by_text("VAE 已切换为").first.wait_for(timeout=30_000)
    page.get_by_text("嵌入（文本反演）").first.click()
    page.locator("#embeddings-info").get_by_text("demo-neg").first.wait_for(timeout=30_000)
    assert "768 维" in page.locator("#embeddings-info").inner_text()
    page.get_by_label("提示词", exact=True).first.fill("山水")
    page.get_by_label("反向提示词").first.fill("demo-neg，模糊")
    page.get_by_label("宽度").first.fill("64")
    page.get_by_label("高度").first.fill("64")
    page.get_by_label("采样步数").first.fill("2")
    page.get_by_label("CLIP 跳过层").first.fill("2")
    page.locator("#generate").click()
    page.locator("#result-summary").get_by_text("用到的嵌入").wait_for(timeout=120_000)
    page.wait_for_timeout(500)
    assert english_words(page) == set(), english_words(page)
    page.get_by_text("A1111 参数文本").first.click()
    text = page.locator("#infotext textarea").first.input_value()
    for part in ("Model: danqing-demo-single", "Model hash: ", "VAE: danqing-demo-vae.safetensors", "Clip skip: 2",
                 "TI hashes: "):
        assert part in text, text
    # 模型下载: look, start, done; the LoRA is in the user's models/lora.
    page.get_by_role("tab", name="模型下载").first.click()
    page.locator("#download-repo textarea, #download-repo input").first.fill("someone/ink-lora")
    page.get_by_role("button", name="查看文件").click()
    page.get_by_text("找到 2 个文件").first.wait_for(timeout=30_000)
    assert english_words(page) == set(), english_words(page)
    page.get_by_role("button", name="开始下载").click()
    page.locator("#download-jobs").get_by_text("已完成").wait_for(timeout=30_000)
    assert (browser_app.outputs.parent / "models" / "lora" / "ink_style.safetensors").stat().st_size == 300_000


def test_training_walk_pictures_captions_train_and_the_lora_is_listed(page, browser_app, demo_cache, tmp_path):
    """训练 LoRA in the browser: four pictures, three with .txt captions, 读取图片 fills the table,
    自动描述 (the demo bundle's captioner) writes the fourth, a short run shows its progress and
    loss curve, and the LoRA is then in the LoRA panel's choices."""
    pictures = []
    for i in range(4):
        picture = Image.new("RGB", (120, 100), (30, 60, 200))
        picture.paste((220, 40, 40), (20 + 10 * i, 20, 70 + 10 * i, 70))
        picture.save(tmp_path / f"p{i}.png")
        pictures.append(str(tmp_path / f"p{i}.png"))
        if i < 3:
            (tmp_path / f"p{i}.txt").write_text("红色方块", encoding="utf-8")
            pictures.append(str(tmp_path / f"p{i}.txt"))
    lora_dir = browser_app.outputs.parent / "models" / "lora"  # the user's models folder, not the demo cache
    try:
        page.reload(wait_until="networkidle")
        page.get_by_role("tab", name="训练 LoRA").first.click()
        page.locator("#train-name textarea, #train-name input").first.fill("浏览器练的")
        page.locator("#train-trigger textarea, #train-trigger input").first.fill("redsq")
        page.locator("#train-files input[type=file]").set_input_files(pictures)
        page.wait_for_timeout(3000)  # the uploads finish
        page.get_by_role("button", name="读取图片").click()
        page.locator("#train-captions").get_by_text("p3.png").wait_for(timeout=30_000)
        page.locator("#train-caption").click()
        page.get_by_text("已为 1 张图片写好描述").first.wait_for(timeout=60_000)
        page.screenshot(path=str(browser_app.outputs.parent / "training-captions.png"), full_page=True)
        page.get_by_text("高级").first.click()
        for label, value in (("训练步数", "12"), ("分辨率", "256")):
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
            page.screenshot(path=str(browser_app.outputs.parent / "training-walk-failed.png"), full_page=True)
            toasts = page.locator(".toast-body").all_inner_texts()
            raise AssertionError(f"status: {page.locator('#train-status').inner_text()!r}; toasts: {toasts}; "
                                 f"log tail: {browser_app.log.read_text(errors='replace')[-1500:]}") from None
        assert english_words(page) == set(), english_words(page)
        assert (lora_dir / "浏览器练的.safetensors").is_file()
        page.get_by_role("tab", name="创作").first.click()
        page.get_by_text("LoRA 模型").first.click()
        # Pickable at once: opening the slot reads the folder (no 刷新 needed).
        page.get_by_label("LoRA 1").first.click()
        page.get_by_role("option", name="浏览器练的.safetensors").wait_for(timeout=30_000)
        page.keyboard.press("Escape")
    finally:
        for made in lora_dir.glob("浏览器练的*"):
            made.unlink()
