"""The extension loader and the whole extension interface.

An extension is a Python module (``name.py``) or package (``name/__init__.py``) in
``extensions/`` or in a folder given with ``--extensions-dir``. It defines ``setup(api)``; the
``api`` object (:class:`ExtensionAPI`) is all it gets:

- ``api.add_tab(title, build)``: a tab after the built-in ones; ``build(studio)`` creates the
  Gradio components inside it (``studio`` is pipelines.studio.Studio, the engine's facade:
  requests in, saved files out). Events that use the model should pass ``concurrency_id=api.concurrency_id``.
- ``api.add_styles({name: (prompt, negative_prompt)})``: prompt styles, A1111 semantics
  (``{prompt}`` in a style's text is replaced by the user's prompt, else the style is appended).
  Calling it again replaces the styles this extension added before (for reloading a file).
- ``api.add_postprocessor(fn)``: ``fn(path, info)`` runs after every image Danqing saves;
  ``info`` holds ``parameters`` (the A1111 text in the PNG), ``seed`` and ``suffix``.
- ``api.lang`` ("zh" or "en"), ``api.path`` (the extension's own file or folder), and
  ``api.error_message(exc)``: the user's sentence for an error the studio raised.
- ``api.creation_field(name)``: inside ``build``, the 创作 panel's component for a request field
  (``prompt``, ``negative_prompt``, ``num_inference_steps``, ``guidance_scale``, ``width``,
  ``height``, ``seed``, ``sampler``, ...), or None: a tab can start from the current settings.
- ``api.caller(request)``: who a Gradio event is for (pass it as ``client=`` to the studio: the
  job's stop switch, its user's outputs folder, its turn at the GPU), and
  ``api.may_change_shared(request)``: whether that user may change what all users share (with
  several ``--auth`` users only the ``--admins`` may; otherwise everyone).

Why so small: the tools users compare us with break their extensions on every upgrade because
extensions reach into internals. Three hooks cover the two built-in extensions (风格预设,
X/Y 对比图) and the usual post-save steps (watermarks, copies to a share), and can stay stable.

A broken extension (an import error, an exception in ``setup`` or while its tab is built) is
logged, listed as failed in 系统信息 and skipped: the app always starts. This module imports no
torch and no Gradio, so ``app.py`` can load extensions before anything heavy.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

log = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).resolve().parent
GPU_CONCURRENCY_ID = "gpu"  # the one queue for every model job (ui.common.GPU is this name)
# No Gradio limit on that queue: every accepted job enters the studio's own line at once
# (pipelines/jobs.py Turns: round-robin between users, each job told its place), and the caps
# (per client, in all) are api/queue_guard.py's. Gradio's own queue would serve them in order of
# arrival, so one user's ten jobs would go before a teammate's one.
GPU_CONCURRENCY_LIMIT = None


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def _merge(style_text: str, user_text: str) -> str:
    """A1111's rule: ``{prompt}`` in the style takes the user's text, else append with a comma."""
    if not style_text:
        return user_text
    if "{prompt}" in style_text:
        return style_text.replace("{prompt}", user_text.strip()).strip(" ,，")
    if not user_text.strip():
        return style_text
    text = user_text.rstrip().rstrip(",，")
    return f"{text}{'，' if text and text[-1] >= chr(0x3000) else ', '}{style_text}"  # a Chinese comma after Chinese


_EXTRA_NETWORK = re.compile(r"<[A-Za-z]+:[^<>]*>")  # <lora:name:w> and A1111's other tags


def apply_styles(prompt: str, negative_prompt: str, styles: Iterable[Style]) -> tuple[str, str]:
    """Styles applied in order; ``<lora:...>`` tags stay at the end of the prompt, outside the
    styles' text."""
    tags = " ".join(m.group(0) for m in _EXTRA_NETWORK.finditer(prompt))
    prompt = re.sub(r"[ \t]{2,}", " ", _EXTRA_NETWORK.sub("", prompt)).strip()
    for style in styles:
        prompt = _merge(style.prompt, prompt)
        negative_prompt = _merge(style.negative_prompt, negative_prompt)
    return (f"{prompt} {tags}".strip() if tags else prompt), _without_repeats(negative_prompt)


_TERMS = re.compile(r"\s*[,，]\s*")


def _without_repeats(text: str) -> str:
    """Two styles both saying 低质量，模糊 in the negative prompt: each term once, first place kept,
    joined with the comma the text used first."""
    terms = [t for t in _TERMS.split(text) if t]
    if len(terms) == len(set(terms)):
        return text
    comma = next((m.group(0).strip() for m in _TERMS.finditer(text)), ",")
    seen: set[str] = set()
    kept = [t for t in terms if not (t in seen or seen.add(t))]
    return (comma if comma == "，" else ", ").join(kept)


@dataclass
class LoadedExtension:
    """One extension found on disk: what it registered and whether it works."""

    name: str
    path: Path
    title: str = ""
    status: str = "ok"  # ok | failed
    error: str | None = None
    module: object = None
    tabs: list[tuple[str, Callable]] = field(default_factory=list)
    styles: dict[str, Style] = field(default_factory=dict)
    postprocessors: list[Callable] = field(default_factory=list)
    runtime_errors: int = 0  # post-processing calls that raised (logged, never fatal)

    def fail(self, exc: BaseException | str, where: str) -> None:
        """Mark the extension failed and drop what it registered; log the traceback."""
        text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        self.status, self.error = "failed", f"{where}: {text}"[:500]
        self.tabs, self.styles, self.postprocessors = [], {}, []
        if isinstance(exc, BaseException):
            log.error("extension %s failed in %s:\n%s", self.name, where,
                      "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        else:
            log.error("extension %s failed in %s: %s", self.name, where, text)

    def summary(self) -> dict:
        """What 系统信息 shows."""
        return {
            "name": self.name,
            "title": self.title or self.name,
            "status": self.status,
            "error": self.error,
            "source": str(self.path),
            "tabs": [title for title, _ in self.tabs],
            "styles": len(self.styles),
            "postprocessors": len(self.postprocessors),
            "runtime_errors": self.runtime_errors,
        }


class ExtensionAPI:
    """What ``setup(api)`` receives: the whole interface an extension may use."""

    concurrency_id = GPU_CONCURRENCY_ID
    concurrency_limit = GPU_CONCURRENCY_LIMIT

    def __init__(self, extension: LoadedExtension, lang: str | None,
                 may_change_shared: Callable[[str], bool] | None = None, shared_ui: dict | None = None) -> None:
        self._ext = extension
        self._may_change_shared = may_change_shared
        self._ui = shared_ui if shared_ui is not None else {}  # filled by the UI before tabs are built
        self.name = extension.name
        self.path = extension.path  # the extension's file or package folder (for its data files)
        self.lang = (lang or "zh").lower()[:2]  # "zh" or "en": pick the extension's own strings

    def add_tab(self, title: str, build: Callable) -> None:
        if not callable(build):
            raise TypeError("add_tab needs a callable build(studio)")
        self._ext.tabs.append((str(title), build))

    def add_styles(self, styles: Mapping[str, tuple[str, str] | Style]) -> None:
        parsed = {}
        for name, value in styles.items():
            if isinstance(value, Style):
                parsed[str(name)] = Style(str(name), value.prompt, value.negative_prompt)
            else:
                prompt, negative = (tuple(value) + ("", ""))[:2]
                parsed[str(name)] = Style(str(name), str(prompt or ""), str(negative or ""))
        self._ext.styles = parsed

    def add_postprocessor(self, fn: Callable) -> None:
        if not callable(fn):
            raise TypeError("add_postprocessor needs a callable fn(path, info)")
        self._ext.postprocessors.append(fn)

    def creation_field(self, name: str):
        return self._ui.get("creation", {}).get(name)

    @staticmethod
    def caller(request):
        """pipelines.requests.Caller of a Gradio event."""
        from pipelines.requests import Caller

        return Caller.of_event(request)

    def may_change_shared(self, request) -> bool:
        user = getattr(request, "username", None) or ""
        return self._may_change_shared is None or bool(self._may_change_shared(user))

    def error_message(self, exc: BaseException) -> str:
        """The sentence users read for an error the studio raised (its ``code``), in ``lang``;
        anything else is logged and gets the generic "internal error" sentence."""
        from strings import error_text, load

        code = getattr(exc, "code", None)
        if code is None:
            log.error("extension %s: unexpected error", self.name, exc_info=exc)
        return error_text(load(self.lang), code or "internal", getattr(exc, "fields", None))


class Extensions:
    """The loaded extensions (iterable) and the merged view of what the working ones added."""

    def __init__(self, loaded: list[LoadedExtension], shared_ui: dict | None = None) -> None:
        self.loaded = loaded
        self.shared_ui = shared_ui if shared_ui is not None else {}  # what the UI lends the tabs

    def lend_creation_fields(self, fields: dict) -> None:
        """The 创作 panel's components by request field name, for ``api.creation_field``."""
        self.shared_ui["creation"] = dict(fields)

    def __iter__(self) -> Iterator[LoadedExtension]:
        return iter(self.loaded)

    def __len__(self) -> int:
        return len(self.loaded)

    def get(self, name: str) -> LoadedExtension | None:
        return next((e for e in self.loaded if e.name == name), None)

    def working(self) -> list[LoadedExtension]:
        return [e for e in self.loaded if e.status == "ok"]

    def tabs(self) -> list[tuple[LoadedExtension, str, Callable]]:
        return [(e, title, build) for e in self.working() for title, build in e.tabs]

    def styles(self) -> dict[str, Style]:
        """Every working extension's styles by name; a later extension wins a name clash."""
        merged: dict[str, Style] = {}
        for ext in self.working():
            merged.update(ext.styles)
        return merged

    def style_names(self) -> list[str]:
        return list(self.styles())

    def apply_styles(self, prompt: str, negative_prompt: str, names: Iterable[str]) -> tuple[str, str]:
        """Prompt and negative prompt with the named styles applied in order; unknown names are
        skipped, as A1111 does."""
        known = self.styles()
        return apply_styles(prompt or "", negative_prompt or "", [known[n] for n in names or () if n in known])

    def postprocess(self, path: Path, info: dict) -> None:
        """Run every post-processing step on a saved image; a failing one is logged, never fatal."""
        for ext in self.working():
            for fn in list(ext.postprocessors):
                try:
                    fn(path, info)
                except Exception:
                    ext.runtime_errors += 1
                    log.exception("post-processing step of extension %s failed on %s", ext.name, path)


_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def _candidates(folder: Path) -> list[tuple[str, Path, Path]]:
    """(name, path, file to import) of each module or package in ``folder``, sorted by name."""
    found = []
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if path.name.startswith(("_", ".")):
            continue
        if path.is_file() and path.suffix == ".py":
            found.append((path.stem, path, path))
        elif path.is_dir() and (path / "__init__.py").is_file():
            found.append((path.name, path, path / "__init__.py"))
    return found


def _import(name: str, path: Path, source: Path):
    module_name = "danqing_extension_" + re.sub(r"\W", "_", name)
    package = [str(path)] if source.name == "__init__.py" else None
    spec = importlib.util.spec_from_file_location(module_name, source, submodule_search_locations=package)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {source}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # relative imports inside a package need it registered
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def load_extensions(dirs: Iterable[str | Path] = (), lang: str | None = None, builtin: bool = True,
                    may_change_shared: Callable[[str], bool] | None = None) -> Extensions:
    """Import every extension in the built-in folder and ``dirs`` and call its ``setup(api)``.
    ``may_change_shared(user)``: the operator's rule for shared settings (None: everyone may).

    Never raises for a broken extension: it is logged and returned with status ``failed``.
    """
    folders = [BUILTIN_DIR] if builtin else []
    folders += [Path(d).expanduser().resolve() for d in dirs]
    loaded: list[LoadedExtension] = []
    shared_ui: dict = {}
    seen: set[Path] = set()
    for folder in folders:
        if folder in seen:
            continue
        seen.add(folder)
        if not folder.is_dir():
            log.warning("extensions folder %s does not exist", folder)
            continue
        for name, path, source in _candidates(folder):
            ext = LoadedExtension(name=name, path=path)
            loaded.append(ext)
            if not _NAME.match(name):
                ext.fail("the name may use only ASCII letters, digits, '_', '-' and '.'", "load")
                continue
            if any(other.name == name for other in loaded[:-1]):
                ext.fail(f"another extension is already called {name}", "load")
                continue
            # 1. Import: any exception (syntax error, missing dependency) marks it failed.
            try:
                module = _import(name, path, source)
            except BaseException as exc:  # noqa: BLE001 - SystemExit from a module must not stop the app
                if isinstance(exc, KeyboardInterrupt):
                    raise
                ext.fail(exc, "import")
                continue
            ext.module = module
            ext.title = str(getattr(module, "TITLE", "") or name)
            setup = getattr(module, "setup", None)
            if not callable(setup):
                ext.fail("it defines no setup(api) function", "load")
                continue
            # 2. setup(api): whatever it registers counts only if it returns normally.
            try:
                setup(ExtensionAPI(ext, lang, may_change_shared, shared_ui))
            except BaseException as exc:  # noqa: BLE001
                if isinstance(exc, KeyboardInterrupt):
                    raise
                ext.fail(exc, "setup")
                continue
            log.info("extension %s loaded (%d tabs, %d styles, %d post-processing steps)",
                     name, len(ext.tabs), len(ext.styles), len(ext.postprocessors))
    return Extensions(loaded, shared_ui)
