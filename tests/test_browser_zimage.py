"""Z-Image (造相, issue 33) as a designer uses it, in headless Chromium (zh-CN): pick it from the
model list (it says Z-Image 造相), turn on 极速 (it knows Turbo: 8 steps, CFG 0, Euler),
generate a poster whose prompt carries a quoted Chinese title — the title arrives intact in the
PNG's parameters and the picture on screen is the one saved — send it to 图生图 and 局部重绘,
guide one with the Z-Image ControlNet union, read 系统信息 (the transformer, the memory mode);
every screen reads Chinese."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pages import (CHROMIUM, control_with, designer_page, english_words, send_to_inpaint_and_paint, sent_pixels, shooter,
                   shown_pixels)

pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium)"),
              pytest.mark.browser]

TITLE = "海报，标题“丹青”，水墨山水，留白"


@pytest.fixture(scope="module")
def zimage_app(demo_models, demo_cache, tmp_path_factory):
    from conftest import LaunchedApp

    app = LaunchedApp(["--demo"], demo_cache, tmp_path_factory.mktemp("browser-zimage") / "outputs")
    yield app
    app.stop()


@pytest.fixture(scope="module")
def page(zimage_app):
    yield from designer_page(zimage_app.url)


shot = shooter("zimage")


def test_a_z_image_designers_walk(page, zimage_app, tmp_path):
    page.get_by_role("tab", name="创作").first.wait_for(timeout=60_000)
    page.get_by_label("CLIP 跳过层").first.wait_for(timeout=30_000)  # SD 1.x's CLIP takes one
    # 1. The list says which model is Z-Image; picking it switches and sets its one-megapixel size.
    page.get_by_label("基础模型").first.click()
    page.get_by_role("option", name="danqing-demo-z-image-turbo（本地） · Z-Image 造相").click()
    page.get_by_text("已切换到模型：danqing-demo-z-image-turbo").first.wait_for(timeout=90_000)
    page.get_by_text("已按 Z-Image 模型的常用尺寸改为").first.wait_for(timeout=30_000)
    page.get_by_label("CLIP 跳过层").first.wait_for(state="hidden", timeout=30_000)  # Qwen3 is not CLIP
    # 2. 极速 knows Turbo: its own 8 steps without CFG.
    page.locator("#fast-mode input").check()
    page.locator("#fast-note").get_by_text("极速已开启").wait_for(timeout=30_000)
    note = page.locator("#fast-note").inner_text()
    assert "Z-Image-Turbo" in note and "8 步" in note, note
    shot(page, tmp_path, "1-fast-turbo")
    # 3. A poster with a quoted Chinese title: the title reaches the saved parameters untouched,
    #    no translation (Qwen3 reads Chinese), and the picture on screen is the one saved.
    page.get_by_label("宽度").first.fill("128")
    page.get_by_label("高度").first.fill("128")
    page.get_by_label("提示词", exact=True).first.fill(TITLE)
    page.click("#generate")
    page.wait_for_timeout(1000)
    page.locator("#result-summary").get_by_text("8 步").first.wait_for(timeout=120_000)
    page.get_by_text("A1111 参数文本").first.click()
    text = page.locator("#infotext textarea").first.input_value()
    assert text.startswith(TITLE) and "Sampler: Euler" in text and "CFG scale: 0" in text, text
    assert "Model: danqing-demo-z-image-turbo" in text, text
    assert page.locator("#result-summary").get_by_text("英文提示词").count() == 0
    saved = sorted(zimage_app.outputs.glob("*/*.png"))[-1]
    with Image.open(saved) as image:
        assert image.info["parameters"].startswith(TITLE)
        on_disk = np.asarray(image.convert("RGB"))
    assert np.array_equal(shown_pixels(page, "#gallery .grid-container img"), on_disk)
    shot(page, tmp_path, "2-poster")
    assert english_words(page) == set(), english_words(page)
    page.locator("#fast-mode input").uncheck()
    page.wait_for_timeout(500)
    # 4. The result to 图生图, and 生成 there.
    assert np.array_equal(sent_pixels(page, "#result-to-img2img", "#img2img-image"), on_disk)
    page.click("#generate-img2img")
    page.locator("#result-summary").get_by_text("图生图：重绘幅度").first.wait_for(timeout=120_000)
    shot(page, tmp_path, "3-img2img")
    # 5. That result to 局部重绘: a brush stroke, 重绘.
    send_to_inpaint_and_paint(page, 0.4, 0.6)
    page.click("#generate-inpaint")
    page.locator("#result-summary").get_by_text("局部重绘：重绘幅度").first.wait_for(timeout=120_000)
    shot(page, tmp_path, "4-inpaint")
    assert english_words(page) == set(), english_words(page)
    # 6. 线稿控制 with the Z-Image ControlNet union.
    lines = Image.new("RGB", (128, 128), "white")
    ImageDraw.Draw(lines).rectangle((24, 40, 104, 88), outline="black", width=6)
    path = tmp_path / "lines.png"
    lines.save(path)
    control_with(page, path, "demo-z-image-controlnet-union", end="0.8")  # guided on the first 80% of steps
    text = page.locator("#infotext textarea").first.input_value()
    assert "Model: demo-z-image-controlnet-union" in text and "Guidance End: 0.8" in text, text
    shot(page, tmp_path, "5-controlnet")
    assert english_words(page) == set(), english_words(page)
    # 7. 系统信息: the transformer is the denoiser, and how it sits in memory.
    page.get_by_role("tab", name="系统信息").first.click()
    page.get_by_text("去噪网络（Transformer）").first.wait_for(timeout=30_000)
    page.get_by_text("显存模式").first.wait_for(timeout=30_000)
    shot(page, tmp_path, "6-system")
    assert english_words(page) == set(), english_words(page)
    # 8. 模型下载: the 常用模型 list fills source, repository and folder for Z-Image-Turbo.
    page.get_by_role("tab", name="模型下载").first.click()
    page.get_by_label("常用模型（选一个即填好来源、仓库和类型）").first.click()
    page.get_by_role("option", name="Z-Image-Turbo 造相（图中写汉字，ModelScope）").click()
    page.wait_for_function("() => document.querySelector('#download-repo textarea, #download-repo input').value"
                           " === 'Tongyi-MAI/Z-Image-Turbo'", timeout=30_000)
    assert page.get_by_label("ModelScope 魔搭").first.is_checked()
    shot(page, tmp_path, "7-download-suggestion")
    assert english_words(page) == set(), english_words(page)
