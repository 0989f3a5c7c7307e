"""Shared fixtures: the demo bundle (generated once per test session into a temporary cache,
through the same code ``--demo`` uses), a store and studio over it, and a really launched app."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("danqing-cache")


@pytest.fixture(scope="session")
def demo_models(demo_cache) -> Path:
    from pipelines.demo import ensure_demo_bundle

    return ensure_demo_bundle(demo_cache)


def make_studio(models_dir: Path, outputs_dir: Path, model: str | None = None):
    from pipelines.demo import DEMO_MODEL
    from pipelines.outputs import OutputWriter
    from pipelines.studio import Studio
    from pipelines.store.settings import EngineSettings
    from pipelines.store import ModelStore

    settings = EngineSettings(
        model=model or DEMO_MODEL, models_dir=models_dir, outputs_dir=outputs_dir,
        device="cpu", demo=True, allow_download=False,
    )
    return Studio(ModelStore(settings), OutputWriter(outputs_dir))


def plain_and_danqing(pipeline_cls, folder: Path, models_dir: Path, prompt: str, guidance: float, check=None):
    """The same job (128², 2 steps, Euler, CFG ``guidance``, negative prompt 模糊, seed 7) through
    plain diffusers' ``pipeline_cls`` and through Danqing's store and 文生图, the models loaded one
    after the other (never side by side); ``check(plain)`` looks at the plain pipeline first.
    Returns (plain's pixels, ours, our store)."""
    import gc

    import numpy as np
    import torch

    from pipelines.requests import Txt2Img
    from pipelines.store import ModelStore
    from pipelines.store.settings import EngineSettings
    from pipelines.tasks import txt2img

    plain = pipeline_cls.from_pretrained(folder, torch_dtype=torch.float32)
    plain.set_progress_bar_config(disable=True)
    if check is not None:
        check(plain)
    ref = np.asarray(plain(prompt, negative_prompt="模糊", width=128, height=128, num_inference_steps=2,
                           guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(7)).images[0])
    del plain
    gc.collect()
    store = ModelStore(EngineSettings(model=str(folder), models_dir=models_dir, device="cpu", dtype="fp32"))
    request = Txt2Img.from_fields(prompt=prompt, negative_prompt="模糊", width=128, height=128, num_inference_steps=2,
                                  guidance_scale=guidance, seed=7, sampler="Euler")
    return ref, np.asarray(txt2img.run(store, request).images[0]), store


@pytest.fixture(scope="session")
def studio(demo_models, tmp_path_factory):
    """One studio for the session: tests that must not disturb it make their own."""
    return make_studio(demo_models, tmp_path_factory.mktemp("outputs"))


@pytest.fixture(scope="session")
def store(studio):
    return studio.store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LaunchedApp:
    def __init__(self, args: list[str], cache: Path, outputs: Path, env: dict | None = None, timeout: float = 120):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.outputs = outputs
        self.log = outputs.parent / f"app-{self.port}.log"
        full_env = {**os.environ, "DANQING_CACHE": str(cache), "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env.pop("SPACE_ID", None)
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), "--no-browser", "--port", str(self.port),
             "--outputs-dir", str(outputs), *args],
            cwd=outputs.parent, env=full_env, stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
        )
        self._wait(timeout)

    def _wait(self, timeout: float = 120) -> None:
        import urllib.error
        import urllib.request

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited early:\n{self.log.read_text()}")
            try:
                urllib.request.urlopen(self.url + "config", timeout=2)
                return
            except urllib.error.HTTPError:  # answering, behind a login (--auth)
                return
            except Exception:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"app did not start:\n{self.log.read_text()}")

    def client(self, auth: tuple[str, str] | None = None):
        from gradio_client import Client

        return Client(self.url, verbose=False, auth=auth)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="session")
def demo_app(demo_models, demo_cache, tmp_path_factory):
    """``python app.py --demo --api`` really launched on a free port (UI, Gradio API and the
    A1111-compatible routes of one process)."""
    work = tmp_path_factory.mktemp("app")
    app = LaunchedApp(["--demo", "--api", "--preview-every", "0"], demo_cache, work / "outputs")
    yield app
    app.stop()


# Extensions that fail in every way the loader must survive, and one that works (a package
# with a relative import). tests/test_extensions.py checks how each is reported.
BROKEN_EXTENSIONS = {
    "bad_import.py": "import no_such_module_for_danqing\n",
    "bad_tab.py": textwrap.dedent("""
        def setup(api):
            def build(studio):
                import gradio as gr
                gr.Markdown("HALF-BUILT TAB")
                raise ValueError("tab exploded")
            api.add_tab("坏标签页", build)
            api.add_styles({"坏风格": ("x", "")})
    """),
    "no_setup.py": "VALUE = 1\n",
    "good": {
        "__init__.py": textwrap.dedent("""
            TITLE = "好扩展"
            from .helper import TEXT

            def setup(api):
                def build(studio):
                    import gradio as gr
                    gr.Markdown(TEXT)
                api.add_tab("好扩展页", build)
                api.add_styles({"测试风格": ("{prompt}，测试", "")})
        """),
        "helper.py": "TEXT = 'EXTENSION-OK'\n",
    },
}
ACCOUNTS = [("设计部", "密码"), ("bot", "secret")]


def write_tree(folder: Path, tree: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in tree.items():
        if isinstance(content, dict):
            write_tree(folder / name, content)
        else:
            (folder / name).write_text(content, encoding="utf-8")


@pytest.fixture(scope="session")
def guarded_app(demo_models, demo_cache, tmp_path_factory):
    """A team server: ``--api --auth`` (a Chinese user name too) and a folder of broken
    extensions it must start with anyway. One launch serves the login and extension tests."""
    work = tmp_path_factory.mktemp("guarded")
    write_tree(work / "extensions", BROKEN_EXTENSIONS)
    accounts = ",".join(f"{user}:{password}" for user, password in ACCOUNTS)
    app = LaunchedApp(["--demo", "--api", "--auth", accounts, "--extensions-dir", str(work / "extensions")],
                      demo_cache, work / "outputs")
    yield app
    app.stop()


@pytest.fixture(scope="session")
def busy_app(demo_models, demo_cache, tmp_path_factory):
    """A small team server for the hardening tests: ``--auth`` with a 2-second login window
    (so a lockout ends within a test) and a queue of at most 2 waiting jobs."""
    work = tmp_path_factory.mktemp("busy")
    user, password = ACCOUNTS[0]
    app = LaunchedApp(["--demo", "--api", "--auth", f"{user}:{password}", "--login-window", "2", "--queue-size", "2"],
                      demo_cache, work / "outputs")
    yield app
    app.stop()


@pytest.fixture(scope="session")
def crowd_app(demo_models, demo_cache, tmp_path_factory):
    """A LAN server for the load tests: 6 waiting jobs at most, 2 per client address (the tests
    speak from 127.0.0.2, 127.0.0.3, ... to be many clients), no login."""
    work = tmp_path_factory.mktemp("crowd")
    app = LaunchedApp(["--demo", "--queue-size", "6", "--client-queue-limit", "2", "--preview-every", "0",
                       "--session-capacity", "40"],
                      demo_cache, work / "outputs", env={"GRADIO_TEMP_DIR": str(work / "gradio-tmp")})
    app.temp = work / "gradio-tmp"
    yield app
    app.stop()


# Markers, applied here from what a test uses (pytest.ini declares them):
#   app      — it launches the app (an ``*_app`` fixture) or another process (subprocess, LaunchedApp);
#   browser  — it drives Chromium (the ``page`` fixture, tests/test_browser*.py);
#   slow     — marked by hand on long in-process tests.
# The inner loop while working: python -m pytest -q tests -m "not app and not browser"
def pytest_collection_modifyitems(config, items):
    import inspect

    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if "page" in names or item.module.__name__.startswith("test_browser"):
            item.add_marker(pytest.mark.browser)
        launches = any(name.endswith("_app") for name in names)
        if not launches:
            try:
                source = inspect.getsource(item.function)
            except (OSError, TypeError):
                source = ""
            launches = "subprocess" in source or "LaunchedApp(" in source
        if launches:
            item.add_marker(pytest.mark.app)
