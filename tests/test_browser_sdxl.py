"""An SDXL model as a designer uses it (issues 31 and 32), in headless Chromium (zh-CN): pick
the SDXL single file from the model list (it says SDXL), generate with a Kohya SDXL LoRA named in
the prompt, see the English the translator gave SDXL's encoders, edit it and generate again,
send the result to 图生图 and 局部重绘 (a brush stroke), guide a picture with an SDXL ControlNet,
then 极速 with the Lightning-style LoRA; every screen reads Chinese; a LoRA of the other family
is a Chinese sentence on the page."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pages import (CHROMIUM, control_with, designer_page, english_words, fill_and_generate, load_training_pictures,
                   send_to_inpaint_and_paint, shooter, train_until_done, use_edited_english)

pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium)"),
              pytest.mark.browser]

@pytest.fixture(scope="module")
def sdxl_app(demo_models, demo_cache, tmp_path_factory):
    from conftest import LaunchedApp

    app = LaunchedApp(["--demo"], demo_cache, tmp_path_factory.mktemp("browser-xl") / "outputs")
    yield app
    app.stop()


@pytest.fixture(scope="module")
def page(sdxl_app):
    yield from designer_page(sdxl_app.url)


shot = shooter("sdxl")


def test_an_sdxl_designers_walk(page, sdxl_app, tmp_path):
    page.get_by_role("tab", name="创作").first.wait_for(timeout=60_000)
    # 1. The model list says which model is SDXL; picking it switches and sets SDXL's size.
    page.get_by_label("基础模型").first.click()
    page.get_by_role("option", name="danqing-demo-xl-single.safetensors（本地） · SDXL").click()
    page.get_by_text("已切换到模型").first.wait_for(timeout=90_000)
    page.get_by_text("已按 SDXL 模型的常用尺寸改为").first.wait_for(timeout=30_000)
    # the toast is said while the sizes' answer is on its way: wait for the box itself
    page.wait_for_function("() => [...document.querySelectorAll('input[type=number]')].some("
                           "e => e.closest('label, .block')?.innerText.includes('宽度') && e.value === '512')",
                           timeout=30_000)  # the demo's SDXL size (256 for SD 1.x)
    assert page.get_by_label("宽度").first.input_value() == "512"
    assert english_words(page) == set(), english_words(page)
    # 2. A Kohya SDXL LoRA named in the prompt, A1111's way.
    fill_and_generate(page, "<lora:danqing-demo-xl-kohya:0.8> gongbi，牡丹，工笔画", width=128, height=128, steps=3)
    page.wait_for_selector("#gallery img", timeout=30_000)
    page.get_by_text("A1111 参数文本").first.click()
    text = page.locator("#infotext textarea").first.input_value()
    assert "Model: danqing-demo-xl-single" in text and "Lora hashes:" in text and "danqing-demo-xl-kohya" in text, text
    shot(page, tmp_path, "1-txt2img-lora")
    # 2b. SDXL reads only English: the demo translator's English is shown; edit it, use it, generate.
    page.locator("#english-box").wait_for(timeout=30_000)  # the box and the summary are two answers
    page.locator("#result-summary").get_by_text("英文提示词（由 danqing-demo-opus-mt-zh-en 翻译）").first.wait_for(
        timeout=30_000)
    assert page.locator("#result-summary").get_by_text("英文提示词（由 danqing-demo-opus-mt-zh-en 翻译）").count() == 1
    use_edited_english(page, "gongbi, a red peony, fine brush painting", "a red peony")
    text = page.locator("#infotext textarea").first.input_value()
    assert text.startswith("gongbi, a red peony, fine brush painting") and "Original prompt: " in text, text
    shot(page, tmp_path, "1b-translation-edited")
    assert english_words(page) == set(), english_words(page)
    # 3. The result to 图生图, and 生成 there.
    page.click("#result-to-img2img")
    page.locator("#img2img-image img").first.wait_for(timeout=30_000)
    page.wait_for_timeout(500)
    page.click("#generate-img2img")
    page.locator("#result-summary").get_by_text("图生图：重绘幅度").first.wait_for(timeout=120_000)
    shot(page, tmp_path, "2-img2img")
    # 4. That result to 局部重绘: a brush stroke, 重绘.
    send_to_inpaint_and_paint(page, 0.4, 0.6)
    page.click("#generate-inpaint")
    page.locator("#result-summary").get_by_text("局部重绘：重绘幅度").first.wait_for(timeout=120_000)
    shot(page, tmp_path, "3-inpaint")
    assert english_words(page) == set(), english_words(page)
    # 5. 线稿控制 with the SDXL Canny ControlNet.
    lines = Image.new("RGB", (128, 128), "white")
    ImageDraw.Draw(lines).ellipse((24, 24, 104, 104), outline="black", width=6)
    path = tmp_path / "lines.png"
    lines.save(path)
    control_with(page, path, "demo-xl-canny")
    shot(page, tmp_path, "4-controlnet")
    assert english_words(page) == set(), english_words(page)
    # 6. An SD 1.x LoRA on this SDXL model: a Chinese sentence, and the page keeps working.
    page.get_by_role("tab", name="创作").first.click()
    page.get_by_role("tab", name="文生图").first.click()
    fill_and_generate_error = "<lora:danqing-demo-kohya:1> 山水"
    page.get_by_label("提示词", exact=True).first.fill(fill_and_generate_error)
    page.click("#generate")
    page.get_by_text("是为 SD 1.x / 2.x 模型训练的，当前基础模型是 SDXL").first.wait_for(timeout=60_000)
    shot(page, tmp_path, "5-wrong-family")
    # 7. 极速: the Lightning-style LoRA at its published settings (Euler, SGM Uniform, 4 steps, CFG 0... 1).
    page.get_by_label("提示词", exact=True).first.fill("牡丹，工笔画")
    page.locator("#fast-mode input").check()
    page.locator("#fast-note").get_by_text("极速已开启").wait_for(timeout=30_000)
    note = page.locator("#fast-note").inner_text()
    assert "SDXL-Lightning" in note and "4 步" in note, note
    page.click("#generate")
    page.locator("#result-summary").get_by_text("4 步").first.wait_for(timeout=120_000)
    shot(page, tmp_path, "6-fast-lightning")
    assert english_words(page) == set(), english_words(page)
    page.locator("#fast-mode input").uncheck()
    page.wait_for_timeout(500)
    # 8. 提示词扩写: the button fills the prompt box (editable before 生成); the switch expands at run time.
    page.get_by_label("提示词", exact=True).first.fill("雨后的西湖")
    page.click("#expand-now")
    page.wait_for_function("() => document.querySelector('#prompt textarea').value.length > '雨后的西湖'.length",
                           timeout=60_000)
    expanded = page.get_by_label("提示词", exact=True).first.input_value()
    assert expanded.startswith("雨后的西湖"), expanded
    shot(page, tmp_path, "7-expand-button")
    page.get_by_label("提示词", exact=True).first.fill("雨后的西湖")
    page.locator("#param-expand input").check()
    page.click("#generate")
    page.locator("#result-summary").get_by_text("提示词扩写（danqing-demo-qwen-prompter）补充了").first.wait_for(timeout=120_000)
    text = page.locator("#infotext textarea").first.input_value()
    assert "Prompt expansion: danqing-demo-qwen-prompter" in text, text
    shot(page, tmp_path, "8-expand-on")
    assert english_words(page) == set(), english_words(page)
    page.locator("#param-expand input").uncheck()
    page.click("#generate")
    page.wait_for_timeout(1500)
    page.locator("#result-summary").get_by_text("种子").first.wait_for(timeout=120_000)
    assert page.locator("#result-summary").get_by_text("提示词扩写").count() == 0
    shot(page, tmp_path, "9-expand-off")
    # 8b. 训练 LoRA on SDXL with Chinese captions: the translator puts them into English first, and
    #     the finished run says so.
    files = []
    for i in range(2):
        picture = Image.new("RGB", (120, 100), (30, 60, 200))
        picture.paste((220, 40, 40), (20 + 10 * i, 20, 70 + 10 * i, 70))
        picture.save(tmp_path / f"p{i}.png")
        (tmp_path / f"p{i}.txt").write_text("红色方块，水墨", encoding="utf-8")
        files += [str(tmp_path / f"p{i}.png"), str(tmp_path / f"p{i}.txt")]
    load_training_pictures(page, "西湖练的", "redsq", files, "p1.png")
    train_until_done(page, {"训练步数": "10", "分辨率": "256"}, sdxl_app.log, tmp_path / "train-failed.png")
    status = page.locator("#train-status").inner_text()
    assert "SDXL 只读英文" in status and "danqing-demo-opus-mt-zh-en" in status, status
    shot(page, tmp_path, "9b-train-translated")
    assert english_words(page) == set(), english_words(page)
    page.get_by_role("tab", name="创作").first.click()
    # 9. Kolors (可图): picked from the list, it reads the Chinese itself (no translation line). The
    #    SDXL LoRA goes out of its slot first (on Kolors it would be refused, as in step 6).
    page.get_by_text("LoRA 模型").first.click()
    page.get_by_label("LoRA 1").first.click()
    page.get_by_role("option", name="无").first.click()
    page.wait_for_timeout(500)
    page.get_by_label("基础模型").first.click()
    page.get_by_role("option", name="danqing-demo-kolors（本地） · Kolors 可图").click()
    page.get_by_text("已切换到模型：danqing-demo-kolors").first.wait_for(timeout=90_000)
    page.wait_for_timeout(1000)
    fill_and_generate(page, "海报，标题“丹青”，雨后的西湖", width=128, height=128, steps=3)
    page.locator("#result-summary").get_by_text("danqing-demo-kolors").first.wait_for(timeout=60_000)
    assert page.locator("#result-summary").get_by_text("英文提示词").count() == 0
    text = page.locator("#infotext textarea").first.input_value()
    assert text.startswith("海报，标题“丹青”，雨后的西湖") and "Model: danqing-demo-kolors" in text, text
    shot(page, tmp_path, "10-kolors")
    assert english_words(page) == set(), english_words(page)
    pictures = sorted(sdxl_app.outputs.glob("*/*.png"))
    assert len(pictures) >= 5
    assert np.asarray(Image.open(pictures[-1]).convert("RGB")).std() > 0
