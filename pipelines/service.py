"""The studio: what the UI and the APIs call. It validates raw request values, runs a task on
the store, saves the results with their metadata and keeps one stop switch per client.

It holds no Gradio and no user-facing text; errors are ``DanqingError`` codes.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import torch
from PIL import Image

from . import txt2img, upscale
from .errors import DanqingError, ParamError
from .outputs import OutputWriter
from .params import Txt2ImgParams, validate_txt2img
from .pnginfo import format_parameters, read_parameters
from .prompts import token_window
from .store import ModelStore

log = logging.getLogger(__name__)

VERSION = "0.1.0"
DRAFT_SIDE = 256  # Rapid Diffusion's draft: the short side at 256, then x4 with ESRGAN


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


class Progress:
    """What the job on the GPU is doing (client, step, total, seconds per step), for the API's
    progress route. Fed by the step hook; read at any time without waiting for the store lock. Only
    one job samples at a time (the store lock), so the latest report is the running job."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict | None = None

    def track(self, client: str, on_step=None):
        """A step hook that records progress for ``client``, then calls ``on_step``."""
        token = object()

        def hook(step: int, total: int) -> None:
            now = time.time()
            with self._lock:
                state = self._state
                if state is None or state["token"] is not token:
                    state = self._state = {"token": token, "client": client, "first": (now, step)}
                state.update(step=step, total=total, updated=now)
            if on_step is not None:
                on_step(step, total)

        return hook

    def finish(self, client: str) -> None:
        with self._lock:
            if self._state is not None and self._state["client"] == client:
                self._state = None

    def snapshot(self) -> dict | None:
        """{client, step, total, seconds_per_step} of the running job, or None when idle."""
        with self._lock:
            state = self._state
            if state is None:
                return None
            (t0, s0), step = state["first"], state["step"]
            rate = (state["updated"] - t0) / (step - s0) if step > s0 else None
            return {"client": state["client"], "step": step, "total": state["total"], "seconds_per_step": rate}


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


class Studio:
    def __init__(self, store: ModelStore, outputs: OutputWriter, extensions: list = ()) -> None:
        self.store = store
        self.outputs = outputs
        self.jobs = Jobs()
        self.progress = Progress()
        # Loaded extensions (extensions.LoadedExtension), listed in system_info.
        self.extensions = list(extensions)

    @contextmanager
    def _job(self, client: str):
        """A stop switch for the job; out-of-memory becomes a friendly error, memory freed."""
        cancel = self.jobs.start(client)
        out_of_memory = False
        try:
            yield cancel
        except Exception as exc:
            if not _is_oom(exc):
                raise
            log.warning("out of memory: %s", exc)
            # The finished frames of the failed job (U-Net forward, sampler loop) hold its
            # tensors through the traceback; clear them, or the memory stays taken.
            traceback.clear_frames(exc.__traceback__)
            out_of_memory = True
        finally:
            self.jobs.finish(client, cancel)
            self.progress.finish(client)
        if out_of_memory:
            # Raised outside the except block, so the collection runs with the frames cleared.
            gc.collect()
            if self.store.plan.device.type == "cuda":
                torch.cuda.empty_cache()
            raise DanqingError("out_of_memory")

    def stop(self, client: str) -> bool:
        return self.jobs.stop(client)

    # -- generation -------------------------------------------------------------------------
    def txt2img(
        self,
        client: str = "local",
        on_step=None,
        on_preview=None,
        hires_upscaler: str | None = None,
        hires_scale: int = 2,
        draft: bool = False,
        **raw,
    ) -> tuple[list[Path], dict]:
        """Validate, generate, (upscale,) save. Returns the saved files and the info dict.

        ``draft``: generate with the short side at 256 and upscale x4 with ``hires_upscaler``
        (the Rapid Diffusion recipe); ``hires_upscaler`` alone upscales every image by
        ``hires_scale`` before saving, keeping the original too. ``on_preview(image, step,
        total)`` gets live previews while it denoises.
        """
        params = validate_txt2img(**raw)
        hires = self._hires(hires_upscaler, 4 if draft else hires_scale, required=draft)
        if draft:
            params = replace(params, **_draft_size(params.width, params.height))
        on_step = self.progress.track(client, on_step)
        with self._job(client) as cancel:
            result = txt2img.run(self.store, params, cancel=cancel, on_step=on_step, on_preview=on_preview)
            return self._finish(params, result, hires, cancel, {"draft": draft})

    def _hires(self, upscaler: str | None, scale: int, required: bool) -> upscale.UpscaleParams | None:
        if not upscaler:
            if required:
                names = upscale.list_upscalers(self.store)
                if not names:
                    raise ParamError("draft_needs_upscaler")
                upscaler = names[0]
            else:
                return None
        if upscaler not in upscale.list_upscalers(self.store):
            raise ParamError("unknown_model_name", kind="upscalers", name=str(upscaler)[:80])
        return upscale.validate_upscale(upscaler, scale)

    def _finish(self, params: Txt2ImgParams, result, hires, cancel, extra: dict, fields: dict | None = None):
        """Save each image (and its upscaled twin) with A1111 parameters; build the info dict."""
        model = self.store.current_ref
        base_fields = {
            "Steps": params.num_inference_steps,
            "Sampler": params.sampler,
            "CFG scale": params.guidance_scale,
            "Size": f"{params.width}x{params.height}",
            "Model": Path(model).name if Path(model).is_absolute() else model,
            **({"DeepCache interval": params.deepcache} if params.deepcache else {}),
            **(fields or {}),
            "Version": f"Danqing {VERSION}",
        }
        prompt = params.prompt
        if params.loras:
            # A1111 keeps the tags in the prompt text and lists short hashes: readers show
            # them, and sending the text back to the form re-selects the same LoRAs.
            hashes = {}
            for row in self.loras():  # a <lora:tag> may name the file, its stem or its folder
                for key in (row["name"], Path(row["name"]).stem, row["name"].split("/", 1)[0]):
                    hashes.setdefault(key, row["hash"])
            prompt += " " + " ".join(f"<lora:{name}:{weight:g}>" for name, weight in params.loras)
            base_fields["Lora hashes"] = ", ".join(f"{name}: {hashes.get(name, '')}" for name, _ in params.loras)
        paths: list[Path] = []
        upscale_seconds = 0.0
        for image, seed in zip(result.images, result.seeds):
            text = format_parameters(prompt, params.negative_prompt, {**base_fields, "Seed": seed})
            paths.append(self.outputs.save(image, text, seed))
            if hires is not None:
                started = time.perf_counter()
                big = upscale.upscale(self.store, image, hires, cancel=cancel)
                upscale_seconds += time.perf_counter() - started
                up_fields = {**base_fields, "Seed": seed, "Hires upscaler": hires.upscaler, "Hires upscale": hires.scale}
                text = format_parameters(prompt, params.negative_prompt, up_fields)
                paths.append(self.outputs.save(big, text, seed, suffix=f"-x{hires.scale}"))
        info = {
            **asdict(params),
            "seed": params.seed,
            "all_seeds": result.seeds,
            "model": model,
            "seconds": round(result.seconds + upscale_seconds, 3),
            "generation_seconds": round(result.seconds, 3),
            "notices": result.notices,
            "files": [p.name for p in paths],
            **extra,
        }
        if hires is not None:
            info.update(upscaler=hires.upscaler, upscale=hires.scale, upscale_seconds=round(upscale_seconds, 3))
        log.info("%dx%d %d steps seed %d: %.2fs", params.width, params.height, params.num_inference_steps, params.seed, info["seconds"])
        return paths, info

    # -- ControlNet ---------------------------------------------------------------------------
    def control_map(self, unit: dict):
        """The control map of one unit: the upload itself when it already is one, else Canny
        edges or a depth map computed from it."""
        from . import preprocess

        image = preprocess.load_image(unit.get("image"))
        if unit.get("is_map"):
            return image
        if unit["kind"] == "canny":
            return preprocess.canny_map(image, unit.get("low_threshold", 100), unit.get("high_threshold", 200))
        if unit["kind"] == "depth":
            with self.store.lock:
                return preprocess.depth_map(self.store, image, unit.get("estimator") or "")
        raise ParamError("unknown_control_kind", value=str(unit.get("kind"))[:20])

    def preview_control(self, unit: dict):
        if unit.get("image") in (None, ""):
            raise ParamError("control_image_missing")
        return self.control_map(unit)

    def control(
        self,
        client: str = "local",
        on_step=None,
        on_preview=None,
        units: list[dict] = (),
        resize_mode: str = "crop",
        hires_upscaler: str | None = None,
        hires_scale: int = 2,
        **raw,
    ) -> tuple[list[Path], dict]:
        """ControlNet generation with one or more units (kind, image, model, weight, window)."""
        from . import controlnet

        params = validate_txt2img(**raw)
        hires = self._hires(hires_upscaler, hires_scale, required=False)
        if not units:
            raise ParamError("control_image_missing")
        for unit in units:
            if unit.get("image") in (None, ""):
                raise ParamError("control_image_missing")
            if unit.get("model") not in controlnet.list_controlnets(self.store):
                raise ParamError("unknown_model_name", kind="controlnet", name=str(unit.get("model"))[:80])
        control_units = tuple(
            controlnet.ControlUnit(
                model=unit["model"], image=self.control_map(unit), weight=unit.get("weight", 1.0),
                guidance_start=unit.get("guidance_start", 0.0), guidance_end=unit.get("guidance_end", 1.0),
            )
            for unit in units
        )
        request = controlnet.validate_control(params, control_units, resize_mode)
        on_step = self.progress.track(client, on_step)
        with self._job(client) as cancel:
            result = controlnet.run(self.store, request, cancel=cancel, on_step=on_step, on_preview=on_preview)
            fields = {
                f"ControlNet {i}": (
                    f"Module: {u['kind'] if not u.get('is_map') else 'none'}, Model: {c.model}, Weight: {c.weight}, "
                    f"Guidance Start: {c.guidance_start}, Guidance End: {c.guidance_end}, Resize Mode: {request.resize_mode}"
                )
                for i, (u, c) in enumerate(zip(units, request.units))
            }
            paths, info = self._finish(params, result, hires, cancel, {}, fields)
            for u, c in zip(units, request.units):
                paths.append(self.outputs.save(c.image, f"control map: {u['kind']}", params.seed, suffix=f"-{u['kind']}-map"))
            info["files"] = [p.name for p in paths]
            info["controlnet"] = [
                {"kind": u["kind"], "model": c.model, "weight": c.weight, "guidance_start": c.guidance_start,
                 "guidance_end": c.guidance_end, "is_map": bool(u.get("is_map"))}
                for u, c in zip(units, request.units)
            ]
            info["resize_mode"] = request.resize_mode
            return paths, info

    def controlnets(self) -> list[str]:
        from . import controlnet

        return controlnet.list_controlnets(self.store)

    def depth_estimators(self) -> list[str]:
        from . import preprocess

        return preprocess.list_depth_estimators(self.store)

    # -- super-resolution -------------------------------------------------------------------
    def upscale_images(self, images: list, upscaler: str, scale: int = 4, client: str = "local", on_step=None):
        """Upscale uploads (paths, bytes or PIL images; checked before decoding) and save them."""
        from .preprocess import open_upload

        if not images:
            raise ParamError("upscale_no_image")
        images = [open_upload(image) for image in images]
        if upscaler not in upscale.list_upscalers(self.store):
            raise ParamError("unknown_model_name", kind="upscalers", name=str(upscaler)[:80])
        params = upscale.validate_upscale(upscaler, scale)
        paths, started = [], time.perf_counter()
        on_step = self.progress.track(client, on_step)
        with self._job(client) as cancel:
            for image in images:
                big = upscale.upscale(self.store, image, params, cancel=cancel, on_step=on_step)
                text = read_parameters(image) or ""
                fields = {"Postprocess upscaler": upscaler, "Postprocess upscale by": scale, "Version": f"Danqing {VERSION}"}
                text = (text + "\n" if text else "") + ", ".join(f"{k}: {v}" for k, v in fields.items())
                paths.append(self.outputs.save(big, text, 0, suffix=f"-x{scale}"))
        return paths, {"upscaler": upscaler, "scale": scale, "seconds": round(time.perf_counter() - started, 3),
                       "files": [p.name for p in paths]}

    def loras(self) -> list[dict]:
        from . import lora

        return lora.list_loras(self.store)

    def lora_preview(self, name: str) -> Image.Image | None:
        """The preview image stored beside a listed LoRA file (same name, .png/.jpg), if any."""
        from .preprocess import open_upload

        row = next((r for r in self.loras() if r["name"] == name), None)
        if row is None or not row.get("preview"):
            return None
        try:
            return open_upload(row["preview"])
        except DanqingError:
            return None

    def upscalers(self) -> list[str]:
        return upscale.list_upscalers(self.store)

    # -- models ---------------------------------------------------------------------------
    def model_choices(self) -> list[dict]:
        return [
            {"ref": c.ref, "local": c.local, "kind": c.kind}
            for c in self.store.model_choices()
        ]

    def switch_model(self, ref: str) -> dict:
        self.store.switch(ref)
        return self.system_info()

    def system_info(self) -> dict:
        info = self.store.system_info()
        info["version"] = VERSION
        info["outputs_dir"] = str(self.outputs.root)
        info["extensions"] = [ext.summary() for ext in self.extensions]
        if self.store.is_loaded():
            info["token_window"] = token_window(self.store.base())
        return info

    # -- PNG info ---------------------------------------------------------------------------
    @staticmethod
    def png_parameters(image: Image.Image) -> str | None:
        return read_parameters(image)

    def recent_outputs(self, limit: int = 60) -> list[Path]:
        return self.outputs.recent(limit)


def _draft_size(width: int, height: int) -> dict:
    """The draft's size: short side 256, the requested aspect ratio, multiples of 8."""
    short = min(width, height)
    w = max(8, round(width * DRAFT_SIDE / short / 8) * 8)
    h = max(8, round(height * DRAFT_SIDE / short / 8) * 8)
    return {"width": w, "height": h}
