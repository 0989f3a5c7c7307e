"""The UI's promises: no torch in ui/, every user-visible string in strings.py, every
engine error code translated."""

import ast
import re
import subprocess
import sys

from conftest import ROOT

CJK = re.compile(r"[\u3400-\u9fff\uff00-\uffef\u3000-\u303f]")


def test_ui_imports_no_torch_or_diffusers():
    code = (
        "import sys; import ui.layout, strings; "
        "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_chinese_text_lives_only_in_the_strings_module():
    offenders = []
    for folder in ("ui", "pipelines", "app.py"):
        for path in ([ROOT / folder] if folder.endswith(".py") else (ROOT / folder).rglob("*.py")):
            if path.name == "strings.py":
                continue
            # Docstrings and comments may mention Chinese names; string constants may not.
            tree = ast.parse(path.read_text(encoding="utf-8"))
            docstrings = {
                id(node.body[0].value)
                for node in ast.walk(tree)
                if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                and node.body and isinstance(node.body[0], ast.Expr)
                and isinstance(node.body[0].value, ast.Constant)
            }
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and id(node) not in docstrings and CJK.search(node.value)
                ):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_every_engine_error_code_has_both_translations():
    from strings import ERRORS_EN, ERRORS_ZH

    codes = set()
    pattern = re.compile(r'(?:DanqingError|ParamError|ModelError)\(\s*"([a-z_0-9]+)"')
    for path in (ROOT / "pipelines").rglob("*.py"):
        codes |= set(pattern.findall(path.read_text(encoding="utf-8")))
    assert codes, "no error codes found: the scan is broken"
    missing = sorted(c for c in codes if c not in ERRORS_ZH or c not in ERRORS_EN)
    assert missing == []


def test_error_text_formats_fields_in_chinese():
    from strings import error_text, load

    text = error_text(load("zh"), "size_not_multiple_of_8", {"width": 65, "height": 64})
    assert "8 的倍数" in text and "65" in text


def test_ui_builds_on_the_demo_studio(studio):
    from ui.layout import UIOptions, build_ui
    from strings import ZH

    demo = build_ui(studio, UIOptions(demo=True))
    config = demo.get_config_file()
    labels = {c.get("props", {}).get("label") for c in config["components"]}
    for key in ("prompt_label", "negative_label", "sampler_label", "steps_label", "seed_label"):
        assert ZH[key] in labels
    api_names = {d.get("api_name") for d in config["dependencies"]}
    assert {"txt2img", "system_info", "stop"} <= api_names


def test_every_event_that_asks_for_the_request_gets_it(studio):
    """Gradio hands an event its gr.Request only when the parameter's annotation evaluates to
    gr.Request and the parameter is positional: under ``from __future__ import annotations``
    with gradio imported inside a function the annotation does not evaluate, and after
    ``*values`` the parameter is keyword-only, which Gradio never fills; either way the event
    silently runs without its user or session (the X/Y grid once ran outside 停止's reach; 历史
    and training with logins ignored who was logged in). Every event of the UI and the
    extensions."""
    import inspect
    import typing

    import gradio as gr

    from extensions import load_extensions
    from ui.layout import UIOptions, build_ui

    extensions = load_extensions()
    demo = build_ui(studio, UIOptions(demo=True), extensions)
    checked = 0
    for block_fn in demo.fns.values():
        fn = block_fn.fn
        if fn is None or "request" not in inspect.signature(fn).parameters:
            continue
        try:
            hints = typing.get_type_hints(fn)
        except Exception as exc:  # noqa: BLE001
            raise AssertionError(f"{block_fn.name}: annotations do not evaluate ({exc})") from None
        assert hints.get("request") in (gr.Request, typing.Optional[gr.Request]), block_fn.name
        kind = inspect.signature(fn).parameters["request"].kind
        assert kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD), \
            f"{block_fn.name}: request is {kind.description}, Gradio never fills it"
        checked += 1
    assert checked >= 20


def test_every_job_kind_and_history_task_is_worded():
    """Task names are said once (requests.JOB_KINDS, HISTORY_TASKS; the task functions are
    registered under them): each has its Chinese and English words, and every registered
    generation task records its job as one of them."""
    from pipelines.requests import HISTORY_TASKS, JOB_KINDS
    from pipelines.tasks import registry
    from strings import EN, ZH

    for table in (ZH, EN):
        assert set(JOB_KINDS) <= set(table["queue_kinds"]), set(JOB_KINDS) - set(table["queue_kinds"])
        assert set(HISTORY_TASKS) <= set(table["history_tasks"]), set(HISTORY_TASKS) - set(table["history_tasks"])
    registry.get("txt2img")  # the task modules register themselves
    assert set(registry.TASKS) == {"txt2img", "controlnet", "control_hires", "img2img", "inpaint", "outpaint"}
    assert {registry.kind_of(name) for name in registry.TASKS} <= set(JOB_KINDS)
