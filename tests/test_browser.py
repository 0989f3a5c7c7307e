"""The UI as a person uses it: headless Chromium (Debian's `chromium`, driven by playwright with
its executable_path — playwright's own browser download cannot work offline). Skips with the
reason when no browser or no playwright is installed; .ci/run installs both."""

import shutil

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser_app(demo_models, demo_cache, tmp_path_factory):
    """An app of its own: no job left by other tests' clients can be queued ahead of the page."""
    from conftest import LaunchedApp

    app = LaunchedApp(["--demo"], demo_cache, tmp_path_factory.mktemp("browser") / "outputs")
    yield app
    app.stop()


@pytest.fixture(scope="module")
def page(browser_app):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
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
