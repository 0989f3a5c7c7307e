"""A team server used in Chromium with two logins (issue 28): an ordinary upgrade — outputs/
already holds a picture made before logins were turned on — then 甲 (the administrator) and 乙
each log in through the page and generate. Each finds only their own picture in 我的; 团队分享
and 全部 open without an error for those allowed; nobody's 我的 holds the old picture, which only
the administrator's 全部 shows; 乙 cannot open it. The page says who is logged in, offers
退出登录, shows 用量 to the administrator only, and every screen reads Chinese."""

from __future__ import annotations

import pytest
from PIL import Image

from pages import CHROMIUM, english_words, fill_and_generate, launch_chromium, log_in, playwright, use_edited_english

pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium)"),
              pytest.mark.browser]

USERS = {"甲": "jia-mima", "乙": "yi-mima"}
OLD_PROMPT = "登录之前画的旧图"


@pytest.fixture(scope="module")
def team_app(demo_models, demo_cache, tmp_path_factory):
    from conftest import LaunchedApp
    from pipelines.formats.pnginfo import format_parameters
    from pipelines.outputs import OutputWriter

    work = tmp_path_factory.mktemp("team-browser")
    # 1. Before logins: one picture in outputs/<day>/, nobody's.
    old = OutputWriter(work / "outputs").save(
        Image.new("RGB", (64, 64), (200, 30, 30)),
        format_parameters(OLD_PROMPT, "", {"Steps": 2, "Sampler": "Euler", "CFG scale": 7, "Seed": 4242,
                                           "Size": "64x64", "Model": "danqing-demo-zh"}), 4242)
    accounts = ",".join(f"{u}:{p}" for u, p in USERS.items())
    app = LaunchedApp(["--demo", "--auth", accounts, "--preview-every", "0"], demo_cache, work / "outputs")
    app.old_picture = old
    yield app
    app.stop()


def search(page, text: str, scope: str | None = None) -> str:
    """Search 历史 (in view ``scope`` when given); returns the page line ('共 N 张' or 没有找到)."""
    if scope is not None:
        page.locator("#history-scope").get_by_text(scope, exact=True).click()
        page.wait_for_timeout(800)
    page.locator("#history-search textarea, #history-search input").first.fill(text)
    page.locator("#history-go").click()
    page.wait_for_timeout(1500)
    return page.locator("#history-page").inner_text()


def logged_in_pages(browser, url: str):
    """甲's and 乙's pages, each in its own browser context (its own cookies), logged in."""
    pages = []
    for user, password in USERS.items():
        page = browser.new_context(viewport={"width": 1300, "height": 900}, locale="zh-CN").new_page()
        log_in(page, url, user, password)
        pages.append(page)
    return pages


def toasts(page) -> list[str]:
    return page.locator(".toast-body").all_inner_texts()


def test_two_logins_each_their_own_history_and_the_old_picture_is_the_administrators(team_app, tmp_path):
    with playwright.sync_playwright() as p:
        browser = launch_chromium(p)
        # 0. The login page names the product, in Chinese.
        login = browser.new_page(viewport={"width": 1300, "height": 900}, locale="zh-CN")
        login.goto(team_app.url, wait_until="networkidle")
        login.get_by_text("丹青 Danqing").first.wait_for(timeout=30_000)
        login.screenshot(path=str(tmp_path / "0-login.png"))
        assert english_words(login) == set(), english_words(login)
        jia, yi = logged_in_pages(browser, team_app.url)
        # 1. Who is logged in, and 退出登录.
        assert "已登录：甲（管理员）" in jia.locator("#logged-in").inner_text()
        assert "已登录：乙" in yi.locator("#logged-in").inner_text()
        assert "管理员" not in yi.locator("#logged-in").inner_text()
        assert yi.locator("#logged-in a", has_text="退出登录").count() == 1
        # 2. Each generates a picture of their own.
        fill_and_generate(jia, "甲画的橘猫")
        fill_and_generate(yi, "乙画的柴犬")
        assert english_words(yi) == set(), english_words(yi)
        # 3. 历史 → 我的: one's own picture only; the old one is nobody's own.
        for page in (jia, yi):
            page.get_by_role("tab", name="历史").first.click()
            page.wait_for_timeout(1500)
        assert "共 1 张" in search(yi, "柴犬")
        assert "没有找到" in search(yi, "橘猫")
        assert "没有找到" in search(yi, OLD_PROMPT)
        assert "共 1 张" in search(jia, "橘猫")
        assert "没有找到" in search(jia, OLD_PROMPT)
        assert "共 1 张" in search(yi, "")  # everything 乙 has is one picture
        yi.screenshot(path=str(tmp_path / "1-yi-history.png"), full_page=True)
        assert english_words(yi) == set(), english_words(yi)
        # 4. 团队分享 opens for both, 全部 only for the administrator, and shows the old picture.
        yi_views = yi.locator("#history-scope").inner_text()
        assert "团队分享" in yi_views and "全部" not in yi_views
        before = len(toasts(yi))
        search(yi, "", "团队分享")
        assert len(toasts(yi)) == before, toasts(yi)  # no 出错了
        assert "全部（管理员）" in jia.locator("#history-scope").inner_text()
        search(jia, "", "团队分享")
        line = search(jia, OLD_PROMPT, "全部（管理员）")
        assert "共 1 张" in line, line
        assert not any("出错" in t for t in toasts(jia)), toasts(jia)
        jia.locator("#recent .thumbnail-item").first.click()
        jia.locator("#history-detail").get_by_text(OLD_PROMPT).first.wait_for(timeout=30_000)
        jia.screenshot(path=str(tmp_path / "2-jia-all.png"), full_page=True)
        assert english_words(jia) == set(), english_words(jia)
        # 5. 用量: the administrator's only.
        for page in (jia, yi):
            page.get_by_role("tab", name="系统信息").first.click()
            page.wait_for_timeout(1200)
        jia.get_by_text("用量（管理员）").first.wait_for(timeout=30_000)
        assert jia.get_by_text("用量（管理员）").count() == 1
        assert yi.get_by_text("用量（管理员）").count() == 0
        assert english_words(yi) == set(), english_words(yi)
        # 6. 乙 cannot open the old picture by its address (the page's own login); 甲 can.
        address = f"{team_app.url}gradio_api/file={team_app.old_picture.resolve()}"
        status = "async (u) => (await fetch(u)).status"
        assert yi.evaluate(status, address) in (403, 404)
        assert jia.evaluate(status, address) == 200
        # 7. 退出登录 ends 乙's session: the login page again.
        yi.locator("#logged-in a", has_text="退出登录").click()
        yi.get_by_label("密码").wait_for(timeout=30_000)
        browser.close()


def test_an_edited_translation_is_the_editors_own(team_app, tmp_path):
    """Issue 32 with two logins: on the (English-only) demo SDXL, 甲 edits the English the
    translator gave 「雨后的西湖」 and generates with it; 乙 typing the same Chinese still gets
    the translator's English, and 甲's next picture keeps 甲's words."""
    with playwright.sync_playwright() as p:
        browser = launch_chromium(p)
        jia, yi = logged_in_pages(browser, team_app.url)
        try:
            # 1. The administrator switches the shared model to the English-only SDXL.
            jia.get_by_label("基础模型").first.click()
            jia.get_by_role("option", name="danqing-demo-xl（本地） · SDXL").click()
            jia.get_by_text("已切换到模型：danqing-demo-xl").first.wait_for(timeout=90_000)
            # 2. 甲 generates, edits the English, uses it, generates again.
            fill_and_generate(jia, "雨后的西湖", width=128, height=128)
            jia.locator("#english-box").wait_for(timeout=30_000)
            translated = jia.locator("#english-prompt textarea").input_value()
            use_edited_english(jia, "west lake after the rain, misty willows", "misty willows")
            jia.screenshot(path=str(tmp_path / "3-jia-edited.png"), full_page=True)
            # 3. 乙, same Chinese: the translator's English, not 甲's edit.
            yi.reload(wait_until="networkidle")
            yi.get_by_role("tab", name="创作").first.wait_for(timeout=60_000)
            fill_and_generate(yi, "雨后的西湖", width=128, height=128)
            yi.locator("#english-box").wait_for(timeout=30_000)
            theirs = yi.locator("#english-prompt textarea").input_value()
            assert theirs == translated and "misty willows" not in theirs, theirs
            assert yi.locator("#result-summary").get_by_text("misty willows").count() == 0
            yi.screenshot(path=str(tmp_path / "4-yi-translator.png"), full_page=True)
            assert english_words(yi) == set(), english_words(yi)
            # 4. 甲's next picture still uses 甲's words.
            jia.click("#generate")
            jia.wait_for_timeout(1000)
            jia.locator("#result-summary").get_by_text("misty willows").first.wait_for(timeout=120_000)
        finally:
            jia.get_by_label("基础模型").first.click()
            jia.get_by_role("option", name="danqing-demo-zh（本地）").click()
            jia.get_by_text("已切换到模型：danqing-demo-zh").first.wait_for(timeout=90_000)
            browser.close()
