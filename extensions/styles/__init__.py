"""风格预设 (prompt styles): named prompt / negative prompt pairs that the 创作 panel's 风格 menu
and the API's ``styles`` field apply.

Stored in A1111's ``styles.csv`` format (``name,prompt,negative_prompt``; ``{prompt}`` marks
where the user's prompt goes, otherwise the style is appended), so a styles.csv from A1111
works as is. The shipped set is ``extensions/styles/styles.csv``; a user copy wins when it
exists: ``$DANQING_STYLES``, else ``styles.csv`` in the working directory (where A1111 keeps
it). The tab edits the user copy (created on the first save; the shipped file stays as it is).
Files saved by Excel or WPS as GBK are read too. Written against the extension interface only.
"""

import csv
import io
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

TITLE = "风格预设"
SHIPPED = Path(__file__).with_name("styles.csv")
COLUMNS = ["name", "prompt", "negative_prompt"]

TEXT = {
    "zh": {
        "tab": "风格预设",
        "intro": (
            "风格是一组提示词和反向提示词，在「创作」页的「风格」里选择后点「套用风格」即可加到提示词中。"
            "提示词里的 `{prompt}` 表示你输入的内容放在哪里，没有 `{prompt}` 时风格接在后面。"
            "格式与 A1111 的 styles.csv 相同，可直接用 Excel / WPS 编辑。"
        ),
        "using": "当前使用的文件：`{path}`",
        "table": "风格列表（可直接编辑，空名称的行会被忽略）",
        "save": "保存",
        "reload": "从文件重新读取",
        "saved": "已保存 {count} 个风格到 `{path}`。刷新页面后「风格」下拉框即更新。",
        "reloaded": "已从 `{path}` 读取 {count} 个风格。",
        "save_failed": "保存失败：无法写入 `{path}`（{error}）。",
        "admin_only": "风格预设由大家共用，只有管理员可以修改。未保存。",
        "admin_note": "风格预设由大家共用：只有管理员可以保存修改。",
        "headers": ["名称", "提示词", "反向提示词"],
    },
    "en": {
        "tab": "Styles",
        "intro": (
            "A style is a prompt and negative prompt pair: pick styles under 'Styles' on the Create tab and press "
            "'Apply styles'. `{prompt}` in a style marks where your prompt goes; without it the style is appended. "
            "Same format as A1111's styles.csv, editable in Excel or WPS."
        ),
        "using": "File in use: `{path}`",
        "table": "Styles (editable; rows without a name are ignored)",
        "save": "Save",
        "reload": "Reload from file",
        "saved": "Saved {count} styles to `{path}`. Reload the page to see them in the Styles menu.",
        "reloaded": "Read {count} styles from `{path}`.",
        "save_failed": "Could not write `{path}` ({error}).",
        "admin_only": "Styles are shared by everyone; only an administrator may change them. Not saved.",
        "admin_note": "Styles are shared by everyone: only an administrator may save changes.",
        "headers": ["name", "prompt", "negative prompt"],
    },
}


def user_file() -> Path:
    return Path(os.environ.get("DANQING_STYLES") or "styles.csv").expanduser().resolve()


def active_file(user: Path) -> Path:
    return user if user.is_file() else SHIPPED


def read_styles(path: Path) -> dict[str, tuple[str, str]]:
    """name -> (prompt, negative_prompt) from an A1111 styles.csv (UTF-8 with or without BOM, or GBK)."""
    raw = Path(path).read_bytes()
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise ValueError(f"{path}: neither UTF-8 nor GBK")
    styles = {}
    for row in csv.DictReader(io.StringIO(text)):
        name = (row.get("name") or "").strip()
        if name:
            styles[name] = ((row.get("prompt") or "").strip(), (row.get("negative_prompt") or "").strip())
    return styles


def write_styles(path: Path, styles: dict[str, tuple[str, str]]) -> None:
    """UTF-8 with a BOM, so Excel and WPS open the Chinese text correctly."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for name, (prompt, negative) in styles.items():
        writer.writerow([name, prompt, negative])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(buffer.getvalue(), encoding="utf-8-sig")


def rows_to_styles(rows) -> dict[str, tuple[str, str]]:
    styles = {}
    for row in rows or []:
        cells = [("" if cell is None else str(cell)).strip() for cell in list(row)[:3]] + ["", "", ""]
        if cells[0]:
            styles[cells[0]] = (cells[1], cells[2])
    return styles


def setup(api) -> None:
    T = TEXT.get(api.lang, TEXT["zh"])
    user = user_file()
    api.add_styles(read_styles(active_file(user)))

    def build(studio) -> None:
        import gradio as gr

        def current_rows():
            return [[name, prompt, negative] for name, (prompt, negative) in read_styles(active_file(user)).items()]

        gr.Markdown(T["intro"])
        if not api.may_change_shared(None):  # several logins: say so before anyone edits
            gr.Markdown(T["admin_note"])
        where = gr.Markdown(T["using"].format(path=active_file(user)))
        table = gr.Dataframe(value=current_rows(), headers=T["headers"], column_count=3, datatype=["str"] * 3,
                             type="array", interactive=True, wrap=True, label=T["table"])
        with gr.Row():
            save = gr.Button(T["save"], variant="primary")
            reload = gr.Button(T["reload"])
        status = gr.Markdown()

        # No ``from __future__ import annotations`` in this module: Gradio finds the request
        # parameter by its evaluated annotation.
        def save_rows(rows, request: gr.Request = None):
            if not api.may_change_shared(request):
                return T["admin_only"], gr.update()
            styles = rows_to_styles(rows)
            try:
                write_styles(user, styles)
            except OSError as exc:
                return T["save_failed"].format(path=user, error=exc), gr.update()
            api.add_styles(styles)
            return T["saved"].format(count=len(styles), path=user), T["using"].format(path=user)

        def reload_rows():
            path = active_file(user)
            styles = read_styles(path)
            api.add_styles(styles)
            return current_rows(), T["reloaded"].format(count=len(styles), path=path), T["using"].format(path=path)

        save.click(save_rows, table, [status, where], queue=False, api_visibility="private")
        reload.click(reload_rows, None, [table, status, where], queue=False, api_visibility="private")

    api.add_tab(T["tab"], build)
