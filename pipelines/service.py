"""The studio: what the UI and the APIs call. It validates raw request values, runs a task on
the store, saves the results with their metadata and keeps one stop switch per client.

It holds no Gradio and no user-facing text; errors are ``DanqingError`` codes.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict
from pathlib import Path

from PIL import Image

from . import txt2img
from .errors import DanqingError
from .outputs import OutputWriter
from .params import validate_txt2img
from .pnginfo import format_parameters, read_parameters
from .prompts import count_tokens, token_window
from .store import ModelStore

log = logging.getLogger(__name__)

VERSION = "0.1.0"


class Jobs:
    """One stop switch per client: pressing 停止 stops that client's job, nobody else's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, threading.Event] = {}

    def start(self, client: str) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._running[client] = event
        return event

    def finish(self, client: str, event: threading.Event) -> None:
        with self._lock:
            if self._running.get(client) is event:
                del self._running[client]

    def stop(self, client: str) -> bool:
        with self._lock:
            event = self._running.get(client)
        if event is None:
            return False
        event.set()
        return True


class Studio:
    def __init__(self, store: ModelStore, outputs: OutputWriter) -> None:
        self.store = store
        self.outputs = outputs
        self.jobs = Jobs()

    # -- text to image ------------------------------------------------------------------
    def txt2img(self, client: str = "local", on_step=None, **raw) -> tuple[list[Path], dict]:
        """Validate, generate, save. Returns the saved files and the info dict."""
        params = validate_txt2img(**raw)
        cancel = self.jobs.start(client)
        try:
            result = txt2img.run(self.store, params, cancel=cancel, on_step=on_step)
        finally:
            self.jobs.finish(client, cancel)
        model = self.store.current_ref
        paths = []
        for image, seed in zip(result.images, result.seeds):
            fields = {
                "Steps": params.num_inference_steps,
                "Sampler": params.sampler,
                "CFG scale": params.guidance_scale,
                "Seed": seed,
                "Size": f"{params.width}x{params.height}",
                "Model": Path(model).name if Path(model).is_absolute() else model,
                "Version": f"Danqing {VERSION}",
            }
            text = format_parameters(params.prompt, params.negative_prompt, fields)
            paths.append(self.outputs.save(image, text, seed))
        info = {
            **asdict(params),
            "seed": params.seed,
            "all_seeds": result.seeds,
            "model": model,
            "seconds": round(result.seconds, 3),
            "notices": result.notices,
            "files": [p.name for p in paths],
        }
        log.info("txt2img %dx%d %d steps seed %d in %.2fs", params.width, params.height, params.num_inference_steps, params.seed, result.seconds)
        return paths, info

    def stop(self, client: str) -> bool:
        return self.jobs.stop(client)

    # -- models ---------------------------------------------------------------------------
    def model_choices(self) -> list[dict]:
        return [
            {"ref": c.ref, "local": c.local, "kind": c.kind}
            for c in self.store.model_choices()
        ]

    def switch_model(self, ref: str) -> dict:
        self.store.switch(ref)
        return self.system_info()

    def model_status(self) -> dict:
        """Whether the configured model can be loaded without a network (no loading done)."""
        try:
            choice = self.store.choice(self.store.current_ref)
        except DanqingError:
            return {"model": self.store.current_ref, "available": False}
        return {"model": choice.ref, "available": choice.local, "kind": choice.kind}

    def system_info(self) -> dict:
        info = self.store.system_info()
        info["version"] = VERSION
        info["outputs_dir"] = str(self.outputs.root)
        if self.store.is_loaded():
            pipe = self.store.base()
            info["token_window"] = token_window(pipe)
        return info

    def prompt_tokens(self, text: str) -> tuple[int, int] | None:
        """(tokens, window) for the loaded model's tokenizer; None before a model is loaded."""
        if not self.store.is_loaded():
            return None
        pipe = self.store.base()
        return count_tokens(pipe.tokenizer, text or ""), token_window(pipe)

    # -- PNG info ---------------------------------------------------------------------------
    @staticmethod
    def png_parameters(image: Image.Image) -> str | None:
        return read_parameters(image)

    def recent_outputs(self, limit: int = 60) -> list[Path]:
        return self.outputs.recent(limit)
