"""The UI as a person uses it: headless Chromium (Debian's `chromium`, driven by playwright with
its executable_path — playwright's own browser download cannot work offline). Skips with the
reason when no browser or no playwright is installed; .ci/run installs both."""

import re
import time

import numpy as np
import pytest
from PIL import Image

from pages import (CHROMIUM, PROGRESS_LINE, designer_page, english_words, fill_and_generate, load_training_pictures,
                   send_to_inpaint_and_paint, sent_pixels, shown_pixels, train_until_done)

pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium)"),
              pytest.mark.browser]


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

    # The HuggingFace mirror is a port nobody listens on: 模型下载 offline, at once.
    app = LaunchedApp(["--demo"], demo_cache, tmp_path_factory.mktemp("browser") / "outputs",
                      env={"HF_ENDPOINT": hub.url, "DANQING_HF_MIRROR": "http://127.0.0.1:9"})
    yield app
    app.stop()


@pytest.fixture(scope="module")
def page(browser_app):
    yield from designer_page(browser_app.url)


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
    # The LoRA title is gathered just after the switch's own answer (a ``.then``): wait for it.
    page.get_by_text("LoRA 模型 · 已启用：pytorch_lora_weights ×1").first.wait_for(timeout=30_000)
    page.get_by_label("提示词", exact=True).first.fill("竹林里的大熊猫，水墨画")
    page.click("#generate")
    page.locator("#result-summary").get_by_text("4 步").first.wait_for(timeout=90_000)
    page.screenshot(path=str(tmp_path / "fast-on.png"))
    assert english_words(page) == set(), english_words(page)
    page.locator("#fast-mode input").uncheck()
    page.locator("#fast-note").get_by_text("已关闭极速").wait_for(timeout=30_000)
    page.wait_for_timeout(500)
    assert page.get_by_label("采样步数").first.input_value() == "20"
    page.get_by_text("LoRA 模型 · 已启用").first.wait_for(state="detached", timeout=30_000)


def test_sending_acts_on_the_picture_on_screen(page, browser_app, tmp_path):
    """Right after a generation (no thumbnail clicked) 发送到图生图 sends that result; 图生图
    runs; then 发送到局部重绘 and 发送到扩图 send *that* result, not the earlier one: the pixels
    that arrive are the ones on screen. With nothing to send, the page says so."""
    page.reload(wait_until="networkidle")
    page.get_by_role("tab", name="创作").first.wait_for(timeout=60_000)
    page.wait_for_timeout(1000)
    page.click("#result-to-img2img")
    page.get_by_text("还没有可以发送的图片").first.wait_for(timeout=30_000)
    # 1. 文生图, then its result to 图生图 at once.
    fill_and_generate(page, "山水画，远山，小船", width=128, height=96, steps=3)
    first = shown_pixels(page, "#gallery .grid-container img")
    assert np.array_equal(sent_pixels(page, "#result-to-img2img", "#img2img-image"), first)
    # 2. 图生图 runs; its result (other pixels) is what goes on.
    page.click("#generate-img2img")
    page.locator("#result-summary").get_by_text("图生图：重绘幅度").first.wait_for(timeout=90_000)
    page.wait_for_timeout(500)
    second = shown_pixels(page, "#gallery .grid-container img")
    assert not np.array_equal(second, first)
    assert np.array_equal(sent_pixels(page, "#result-to-outpaint", "#outpaint-image"), second)
    assert english_words(page) == set()
    # 3. The same result to 局部重绘: a stroke, 重绘 with the input saved beside: the input the
    # server received is the picture that was on screen.
    send_to_inpaint_and_paint(page, 0.45, 0.55)
    page.locator("#save-inputs-inpaint input").check()
    page.click("#generate-inpaint")
    page.locator("#result-summary").get_by_text("局部重绘：重绘幅度").first.wait_for(timeout=90_000)
    page.screenshot(path=str(tmp_path / "inpainted.png"))
    assert english_words(page) == set()
    received = max(browser_app.outputs.glob("*/*-init.png"), key=lambda p: p.stat().st_mtime)
    assert np.array_equal(np.asarray(Image.open(received).convert("RGB")), second)
    # 4. 扩图 and 文生图 with 高清修复 read in Chinese too.
    page.get_by_role("tab", name="扩图").first.click()
    page.locator("#hires-pass input").check()
    page.get_by_label("修复重绘幅度").first.wait_for(timeout=30_000)
    page.locator("#hires-scale").get_by_text("×1.5").first.wait_for(timeout=30_000)  # its own factor, beside it
    assert page.locator("#hires-scale").get_by_text("×1.5").count() == 1
    assert english_words(page) == set()
    page.locator("#hires-pass input").uncheck()


@pytest.mark.parametrize("width,height", [(256, 256), (192, 320), (512, 128)])
def test_every_picture_is_drawn_whole(page, width, height):
    """Square, portrait and 4:1 results, a batch with one picked, and 历史: each picture in its
    own proportions, nothing cut off, no scroll bar inside a box."""
    from pages import drawn_whole

    page.get_by_role("tab", name="创作").first.click()
    page.get_by_role("tab", name="文生图").first.click()
    page.get_by_label("提示词", exact=True).first.fill("竹林里的大熊猫")
    page.get_by_label("宽度").first.fill(str(width))
    page.get_by_label("高度").first.fill(str(height))
    page.get_by_label("采样步数").first.fill("1")
    page.get_by_label("每次生成张数").first.fill("2" if width == height else "1")
    page.get_by_label("采样步数").first.press("Tab")
    page.click("#generate")
    page.locator("#result-summary").get_by_text(f"{width}×{height}").first.wait_for(timeout=90_000)
    page.locator("#gallery .grid-container img").first.wait_for(state="attached", timeout=30_000)
    page.wait_for_timeout(800)
    assert drawn_whole(page, "#gallery") == []
    if width == height:  # a batch: the picked one, large
        page.locator("#gallery .grid-container .thumbnail-item").nth(1).click()
        page.locator("#gallery .preview img").first.wait_for(timeout=30_000)
        page.wait_for_timeout(800)
        assert drawn_whole(page, "#gallery .preview .media-button") == []
        page.get_by_label("每次生成张数").first.fill("1")
    page.get_by_role("tab", name="历史").first.click()
    page.locator("#recent .thumbnail-item").first.wait_for(timeout=30_000)
    page.wait_for_timeout(800)
    assert drawn_whole(page, "#recent") == []


def test_the_tool_screens_read_chinese(page, tmp_path):
    """超分辨率 after an upscale, X/Y after a grid, 系统信息, 模型下载 offline: every screen in
    Chinese, results in words (no raw JSON), failures in a sentence (no red error marks)."""
    picture = tmp_path / "p9.png"
    Image.fromarray((np.random.default_rng(2).random((48, 64, 3)) * 255).astype("uint8")).save(picture)
    # 1. 超分辨率.
    page.get_by_role("tab", name="超分辨率").first.click()
    page.locator("#upscale-files input[type=file]").set_input_files(str(picture))
    page.wait_for_timeout(1500)
    page.get_by_role("button", name="开始放大").click()
    page.locator("#upscale-summary").get_by_text("已放大").wait_for(timeout=90_000)
    assert page.locator("#upscale-results img").count() == 1
    assert english_words(page) == set(), english_words(page)
    # 2. X/Y: a small grid; what was made, in words.
    page.get_by_role("tab", name="X/Y 对比图").first.click()
    page.get_by_role("button", name="载入「创作」页的当前设置").click()
    page.wait_for_timeout(500)
    for name, value in (("steps", "1"), ("width", "64"), ("height", "64")):
        box = page.locator(f"#xy-{name} input[type=number]")
        box.fill(value)
        box.press("Tab")
    page.locator("#xy-y-values textarea, #xy-y-values input").first.fill("1")
    page.locator("#xy-prompt textarea").fill("竹林")
    page.click("#xy-run")
    page.locator("#xy-summary").get_by_text("对比图已保存").wait_for(timeout=120_000)
    assert "横轴：" in page.locator("#xy-summary").inner_text()
    assert english_words(page) == set(), english_words(page)
    # 3. 系统信息: the resident models by kind, in Chinese.
    page.get_by_role("tab", name="系统信息").first.click()
    page.get_by_text("去噪网络（U-Net）").first.wait_for(timeout=30_000)
    assert english_words(page) == set(), english_words(page)
    # 4. 模型下载 through an unreachable mirror: said in the summary line, fields unmarked.
    page.get_by_role("tab", name="模型下载").first.click()
    page.get_by_label("HuggingFace 镜像").check()
    page.locator("#download-repo textarea, #download-repo input").first.fill("someone/ink-lora")
    page.get_by_role("button", name="查看文件").click()
    page.locator("#download-summary").get_by_text("连不上镜像").wait_for(timeout=30_000)
    assert "ModelScope" in page.locator("#download-summary").inner_text()
    assert page.get_by_text("出错了").count() == 0
    page.get_by_role("button", name="开始下载").click()
    page.wait_for_timeout(1500)
    assert page.get_by_text("出错了").count() == 0
    page.screenshot(path=str(tmp_path / "download-offline.png"), full_page=True)
    assert english_words(page) == set(), english_words(page)
    page.get_by_label("HuggingFace", exact=True).check()


def test_fast_mode_runs_the_lora_at_its_published_weight_every_time(page):
    """极速 on, generate, off — several rounds: each image's parameters say the LoRA at 1 (never
    the slot's old 0.8), named without its file ending."""
    page.get_by_role("tab", name="创作").first.click()
    page.get_by_role("tab", name="文生图").first.click()
    page.get_by_label("提示词", exact=True).first.fill("竹林")
    page.get_by_label("宽度").first.fill("64")
    page.get_by_label("高度").first.fill("64")
    page.get_by_label("采样步数").first.press("Tab")
    page.get_by_text("A1111 参数文本").first.click()  # the parameters text, open below the result
    for round_ in range(4):
        page.locator("#fast-mode input").check()
        page.locator("#fast-note").get_by_text("极速已开启").wait_for(timeout=30_000)
        page.click("#generate")
        page.locator("#result-summary").get_by_text("4 步").first.wait_for(timeout=90_000)
        page.wait_for_timeout(300)
        text = page.locator("#infotext textarea").first.input_value()
        assert "<lora:lcm-lora-sdv1-5-tiny:1>" in text, (round_, text)
        page.locator("#fast-mode input").uncheck()
        page.locator("#fast-note").get_by_text("已关闭极速").wait_for(timeout=30_000)
        page.wait_for_timeout(300)


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
        load_training_pictures(page, "浏览器练的", "redsq", pictures, "p3.png")
        page.locator("#train-caption").click()
        page.get_by_text("已为 1 张图片写好描述").first.wait_for(timeout=60_000)
        page.screenshot(path=str(browser_app.outputs.parent / "training-captions.png"), full_page=True)
        train_until_done(page, {"训练步数": "12", "分辨率": "256"}, browser_app.log,
                         browser_app.outputs.parent / "training-walk-failed.png")
        assert english_words(page) == set(), english_words(page)
        assert "译成英文" not in page.locator("#train-status").inner_text()  # PAI reads the Chinese captions
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
