"""AUTOMATIC1111-compatible REST API: ``/sdapi/v1/...`` and the ControlNet extension's
``/controlnet/...`` routes, served by the UI's own server (same port, login and GPU queue).

Why: Krita and Photoshop plugins, chat bots, the ``webuiapi`` client and batch scripts already
speak A1111's API. Every route calls the Studio methods the UI calls (no second engine path);
this module only translates at the edge: A1111 sampler names and checkpoint titles, ControlNet
modules, base64 images, ``n_iter`` batches. Heavy routes are plain ``def`` (FastAPI runs them in
a thread pool) and run through the studio's job context (the GPU lock every UI job takes), so API and UI jobs never
interleave; ``/progress`` and ``/interrupt`` are ``async`` and never wait for it.

Errors: a Danqing error code becomes a 422 JSON body with the Chinese (or ``--lang en``)
sentence from ui/strings.py; wrongly typed fields too. Unknown fields are ignored, as in A1111.
With ``--auth`` every route needs HTTP Basic credentials (A1111's ``--api-auth`` style).
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import math
import re
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from PIL import Image
from pydantic import ValidationError

from pipelines.errors import DanqingError, JobCancelled, ParamError
from pipelines.formats.images import MAX_INPUT_PIXELS, MAX_UPLOAD_BYTES, read_info
from pipelines.formats.pnginfo import MAX_PARAMETERS_CHARS, parse_parameters, read_parameters_of
from pipelines.requests import (
    DEFAULT_SAMPLER,
    LATENT_UPSCALER,
    MAX_CLIP_SKIP,
    MAX_UNITS,
    SAMPLER_NAMES,
    Caller,
    Control,
    ControlUnit,
    Img2Img,
    Inpaint,
    Txt2Img,
    Upscale,
    declared_fields,
)
from strings import error_text, load

from .accounts import Accounts, user_of
from .queue_guard import on_disconnect

from .schemas import (
    ControlNetArgs,
    DetectRequest,
    DownloadRequest,
    ExtraSingleImageRequest,
    Img2ImgRequest,
    OptionsRequest,
    PngInfoRequest,
    Txt2ImgRequest,
)

log = logging.getLogger(__name__)

MAX_N_ITER = 64
MAX_DETECT_IMAGES = 8
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
_HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]{6,64}\]\s*$")  # A1111 titles: "name [abcdef1234]"
_DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)

# k-diffusion style aliases A1111 lists next to each sampler name.
SAMPLER_ALIASES = {
    "DPM++ 2M Karras": ["k_dpmpp_2m_ka"],
    "DPM++ 2M": ["k_dpmpp_2m"],
    "DPM++ 2M SDE Karras": ["k_dpmpp_2m_sde_ka"],
    "Euler a": ["k_euler_a", "k_euler_ancestral"],
    "Euler": ["k_euler"],
    "Heun": ["k_heun"],
    "LMS": ["k_lms"],
    "DDIM": ["ddim"],
    "PNDM": ["pndm", "plms"],
    "UniPC": ["uni_pc"],
    "LCM": ["lcm"],
    "TCD": ["tcd"],
}
# A1111 1.9's schedulers (/sdapi/v1/schedulers): its names and labels, mapped to ours.
SCHEDULE_ALIASES = {"Automatic": ["automatic", ""], "Karras": ["karras"], "SGM Uniform": ["sgm_uniform", "trailing"]}
# A1111's names for the Real-ESRGAN files it downloads, mapped to the files' own stems.
A1111_UPSCALERS = {
    "r-esrgan 4x+": "RealESRGAN_x4plus",
    "r-esrgan 4x+ anime6b": "RealESRGAN_x4plus_anime_6B",
    "r-esrgan 2x+": "RealESRGAN_x2plus",
    "r-esrgan general 4xv3": "realesr-general-x4v3",
    "r-esrgan general wdn 4xv3": "realesr-general-wdn-x4v3",
    "r-esrgan animevideo": "realesr-animevideov3",
}
# sd-webui-controlnet preprocessor names -> (Danqing control kind, depth estimator keyword).
CONTROL_MODULES = {
    "canny": ("canny", None),
    "depth": ("depth", "midas"),
    "depth_midas": ("depth", "midas"),
    "depth_leres": ("depth", "leres"),
    "depth_leres++": ("depth", "leres"),
    "depth_zoe": ("depth", "zoe"),
    "depth_anything": ("depth", "anything"),
    "depth_anything_v2": ("depth", "anything"),
}
# A1111's inpainting_fill numbers: 0 fill, 1 original, 2 latent noise, 3 latent nothing.
A1111_FILLS = ("fill", "original", "latent_noise", "latent_nothing")
RESIZE_MODES = {
    "just resize": "stretch", "0": "stretch",
    "crop and resize": "crop", "1": "crop", "scale to fit (inner fit)": "crop", "inner fit (scale to fit)": "crop",
    "resize and fill": "fit", "2": "fit", "envelope (outer fit)": "fit", "outer fit (shrink to fit)": "fit",
}


# 1. Small translations ------------------------------------------------------------------------
# A1111's sd_vae option values for Danqing's automatic / the model's own choices.
A1111_VAE_NAMES = {"auto": "Automatic", "none": "None"}


def _stem(name: str) -> str:
    base = Path(name).name
    for suffix in WEIGHT_SUFFIXES:
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


def pick_name(name: object, available: list[str]) -> str:
    """The listed name an A1111 client means: exact, without the ``[hash]`` A1111 appends, or the
    one file with that stem. Anything else comes back as given (the Studio then refuses it)."""
    text = _HASH_SUFFIX.sub("", str(name or "")).strip()
    if text in available:
        return text
    matches = [a for a in available if _stem(a) == _stem(text) or Path(a).name == text]
    return matches[0] if len(matches) == 1 else text


def sampler_name(name: str | None, scheduler: str | None = None) -> str:
    """An A1111 sampler name (or alias; A1111 1.9's separate 'Karras' scheduler) -> ours."""
    if not name:
        return DEFAULT_SAMPLER
    wanted = name.strip().lower()
    found = next((s for s in SAMPLER_NAMES if s.lower() == wanted), None)
    found = found or next((s for s, aliases in SAMPLER_ALIASES.items() if wanted in aliases), None)
    if found and scheduler and scheduler.strip().lower() == "karras" and f"{found} Karras" in SAMPLER_NAMES:
        found = f"{found} Karras"
    return found or name  # unknown: validate_txt2img refuses it with the list of names


def schedule_name(scheduler: str | None, sampler: str) -> str:
    """A1111's ``scheduler`` (a name or a label) -> our schedule type. 'Karras' already folded
    into the sampler's name (sampler_name) is Automatic here; an unknown one comes back as
    given (the request then refuses it in Chinese)."""
    wanted = (scheduler or "").strip().lower()
    for name, aliases in SCHEDULE_ALIASES.items():
        if wanted == name.lower() or wanted in aliases:
            return "Automatic" if name == "Karras" and sampler.endswith(" Karras") else name
    return str(scheduler)


def image_bytes(value: Any, missing: str = "control_image_missing") -> bytes:
    """Bytes of a base64 image (with or without a ``data:`` prefix; {'image': ...} accepted)."""
    if isinstance(value, dict):
        value = value.get("image")
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ParamError(missing)
    if not isinstance(value, str):
        raise ParamError("image_unreadable")
    text = _DATA_URL.sub("", value.strip())
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ParamError("image_unreadable") from None


def b64_file(path: Path) -> str:
    """The saved PNG itself, so clients get its parameters and AIGC label too."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def b64_image(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _scale_of(name: str) -> int:
    match = re.search(r"x([248])", name, re.IGNORECASE)
    return int(match.group(1)) if match else 4


def _threshold(value: float, default: int, name: str) -> int:
    """A ControlNet threshold (-1: the default); anything not finite is refused."""
    if not math.isfinite(value):
        raise ParamError("not_a_number", name=name, value=str(value))
    return round(value) if value >= 0 else default


def _decoded_size(value: Any) -> int:
    """Bytes a base64 image will take once decoded (checked before decoding it)."""
    if isinstance(value, dict):
        value = value.get("image")
    return len(value) * 3 // 4 if isinstance(value, str) else 0


# 3. Errors, login, request size ------------------------------------------------------------
def _error(S, status: int, code: str, fields: dict | None = None, kind: str = "ParamError") -> JSONResponse:
    fields = {k: v if isinstance(v, (int, float, str, bool)) or v is None else str(v) for k, v in (fields or {}).items()}
    return JSONResponse(
        {"error": kind, "code": code, "detail": error_text(S, code, fields), "fields": fields},
        status_code=status,
    )


def _validation_error(S, errors: list[dict]) -> JSONResponse:
    """Pydantic's first complaint as one of our sentences (the field name stays ASCII)."""
    first = errors[0] if errors else {}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    name, kind = ".".join(loc), first.get("type", "")
    value = str(first.get("input"))[:40]
    if not loc or kind in ("json_invalid", "model_attributes_type", "dict_type"):
        code, fields = "api_bad_json", {}
    elif kind.startswith("int_"):
        code, fields = "not_an_integer", {"name": name, "value": value}
    elif kind.startswith("float_") or kind == "finite_number":
        code, fields = "not_a_number", {"name": name, "value": value}
    elif kind.startswith("string_"):
        code, fields = "not_text", {"name": name}
    else:
        code, fields = "api_bad_field", {"name": name}
    return _error(S, 422, code, fields, kind="ValidationError")


def _route_class(S):
    class SdapiRoute(APIRoute):
        """Every route: errors become JSON with our sentences (422; 403 for administrators only, 404
        for an image that is not there or not the caller's, 503 offline) (bodies were counted and
        checked at the edge: api/security.py)."""

        def get_route_handler(self):
            handler = super().get_route_handler()

            async def guarded(request: Request):
                try:
                    return await handler(request)
                except RequestValidationError as exc:
                    return _validation_error(S, list(exc.errors()))
                except DanqingError as exc:
                    status = {"admin_only": 403, "admin_only_usage": 403, "download_offline": 503,
                              "download_offline_mirror": 503, "download_offline_modelscope": 503,
                              "history_not_found": 404, "job_not_found": 404}.get(exc.code, 422)
                    return _error(S, status, exc.code, exc.fields, kind=type(exc).__name__)
                except HTTPException:
                    raise
                except Exception:
                    log.exception("API request %s failed", request.url.path)
                    return _error(S, 500, "internal", kind="InternalError")

            return guarded

    return SdapiRoute


def _history_row(entry, mine: str) -> dict:
    """An indexed image for the API: its parameters and file name, never a server path."""
    row = {"id": entry.id, "file": Path(entry.path).name, "day": entry.day, "task": entry.task,
           "prompt": entry.prompt, "negative_prompt": entry.negative, "seed": entry.seed, "model": entry.model,
           "loras": entry.loras, "sampler": entry.sampler, "steps": entry.steps, "cfg_scale": entry.cfg,
           "width": entry.width, "height": entry.height, "shared": entry.shared, "trashed": entry.trashed,
           "mine": entry.owner == mine}
    if entry.owner != mine:
        row["owner"] = entry.owner
    return row


def _login(accounts: Accounts, S):
    """A dependency returning the API user ("" without --auth). The edge middleware
    (api/security.py) has already checked the credentials, before the body was read; this
    only reads its answer (and refuses, should a route ever be reached without it).
    ``async`` so it runs on the event loop: /progress answers even when every worker thread
    is waiting for the GPU."""

    async def require_user(request: Request) -> str:
        user = user_of(request.scope)
        if accounts.required and not user:
            raise HTTPException(
                status_code=401,
                detail=error_text(S, "api_login_required"),
                headers={"WWW-Authenticate": 'Basic realm="Danqing", charset="UTF-8"'},
            )
        return user

    return require_user


# 4. The routes -----------------------------------------------------------------------------
class SdApi:
    """The A1111 routes over one Studio. ``styles`` is the extensions' style registry (or None)."""

    def __init__(self, studio, S, styles=None, accounts: Accounts | None = None) -> None:
        self.studio = studio
        self.S = S
        self.accounts = accounts or Accounts()
        self.styles = styles
        # A1111's CLIP_stop_at_last_layers option: the clip skip of API requests that do not
        # override it (the UI has its own slider).
        self.clip_skip = 1

    # -- translations that need the studio ---------------------------------------------------
    def model_ref(self, title: object) -> str:
        return pick_name(title, [c["ref"] for c in self.studio.model_choices()])

    def upscaler(self, name: str) -> str:
        wanted = A1111_UPSCALERS.get(str(name).strip().lower(), name)
        return pick_name(wanted, self.studio.upscalers())

    def estimator(self, keyword: str | None) -> str:
        names = self.studio.depth_estimators()
        keywords = {"midas": ("midas", "dpt")}.get(keyword, (keyword,)) if keyword else ()
        preferred = [n for n in names if any(k in n.lower() for k in keywords)]
        return (preferred or names or [""])[0]

    def control_units(self, scripts: dict) -> tuple[list[dict], str]:
        """alwayson_scripts.controlnet.args -> ControlUnit fields and one resize mode."""
        raw = next((v for k, v in scripts.items() if k.lower() == "controlnet"), None)
        if not raw:
            return [], "crop"
        try:
            args = ControlNetArgs.model_validate(raw if isinstance(raw, dict) else {"args": raw}).args
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("body", "alwayson_scripts", "controlnet", *e["loc"])} for e in exc.errors()]
            ) from None
        # 1. Count, names and sizes first: no image is decoded before the request is known to fit.
        enabled = [u for u in args if u.enabled]
        if len(enabled) > MAX_UNITS:
            raise ParamError("controlnet_too_many_units", count=len(enabled), limit=MAX_UNITS)
        names = self.studio.controlnets()
        plans, resize_mode = [], None
        for unit in enabled:
            module = (unit.module or "none").strip().lower()
            model = pick_name(unit.model or "", names)
            if module == "none":
                kind, keyword, is_map = ("depth" if "depth" in model.lower() else "canny"), None, True
            elif module in CONTROL_MODULES:
                (kind, keyword), is_map = CONTROL_MODULES[module], False
            else:
                raise ParamError("unknown_control_kind", value=module[:20])
            if not model:
                raise ParamError("controlnet_no_model")
            if model not in names:
                raise ParamError("unknown_model_name", kind="controlnet", name=model[:80])
            image = unit.image if unit.image not in (None, "") else unit.input_image
            if _decoded_size(image) > MAX_UPLOAD_BYTES:
                raise ParamError("image_too_large", megapixels=MAX_INPUT_PIXELS // 1_000_000)
            plans.append((unit, image, kind, keyword, is_map, model, _threshold(unit.threshold_a, 100, "threshold_a"),
                          _threshold(unit.threshold_b, 200, "threshold_b")))
            if resize_mode is None:
                mode = str(unit.resize_mode).strip().lower()
                resize_mode = RESIZE_MODES.get(mode, mode)
        # 2. Then the images, one at a time (base64 to bytes; pixels are decoded by the task).
        units = []
        for unit, image, kind, keyword, is_map, model, low, high in plans:
            units.append({
                "kind": kind, "image": image_bytes(image), "is_map": is_map, "model": model,
                "weight": unit.weight, "guidance_start": unit.guidance_start, "guidance_end": unit.guidance_end,
                "low_threshold": low, "high_threshold": high,
                "estimator": self.estimator(keyword) if kind == "depth" and not is_map else "",
            })
        return units, resize_mode or "crop"

    def _turn(self, job) -> ExitStack:
        """The GPU for a whole request. Interrupted while waiting, the request holds nothing and
        ``job.interrupted`` is set: it ends with what it has (nothing), as A1111 answers."""
        stack = ExitStack()
        try:
            stack.enter_context(self.studio.hold_gpu(job))
        except JobCancelled:
            job.interrupted = True
        return stack

    # -- txt2img and img2img --------------------------------------------------------------------
    def _base(self, req: Txt2ImgRequest, **more) -> tuple[Txt2Img, str, str, str]:
        """The Txt2Img of an A1111 request (styles applied, sampler translated), and the prompt,
        negative prompt and sampler A1111 echoes back."""
        if not 1 <= req.n_iter <= MAX_N_ITER:
            raise ParamError("out_of_range", name="n_iter", value=req.n_iter, low=1, high=MAX_N_ITER)
        prompt, negative = req.prompt, req.negative_prompt
        if self.styles is not None and req.styles:
            prompt, negative = self.styles.apply_styles(prompt, negative, req.styles)
        sampler = sampler_name(req.sampler_name or req.sampler_index, req.scheduler)
        request = Txt2Img.from_fields(
            prompt=prompt, negative_prompt=negative, num_inference_steps=req.steps, guidance_scale=req.cfg_scale,
            width=req.width, height=req.height, seed=req.seed, num_images_per_prompt=req.batch_size, sampler=sampler,
            schedule_type=schedule_name(req.scheduler, sampler), eta=req.eta,
            clip_skip=req.override_settings.get("CLIP_stop_at_last_layers", self.clip_skip),
            # Fields Txt2Img declares itself arrive by their A1111 names (api/schemas.py).
            **{f.name: getattr(req, f.metadata["a1111"]) for f in declared_fields(Txt2Img) if f.metadata["a1111"]},
            **more,
        )
        request.check_outputs(repeats=req.n_iter)  # n_iter batches count in one request's budget
        return request, prompt, negative, sampler

    def _hires(self, req: Txt2ImgRequest) -> dict:
        """A1111's hires fix fields as Txt2Img fields (``enable_hr`` off: none)."""
        if not req.enable_hr:
            return {}
        scale = req.hr_scale
        if req.hr_resize_x > 0 or req.hr_resize_y > 0:  # a target size instead of a factor: the aspect is kept
            scale = max(req.hr_resize_x / max(req.width, 1), req.hr_resize_y / max(req.height, 1))
        named = (req.hr_upscaler or "Latent").strip()
        upscaler = LATENT_UPSCALER if named.lower().startswith("latent") or named.lower() == "none" else self.upscaler(named)
        return {"hires_pass": True, "hires_upscaler": upscaler, "hires_scale": scale,
                "hires_strength": 0.7 if req.denoising_strength is None else req.denoising_strength,
                "hires_steps": req.hr_second_pass_steps}

    def txt2img(self, req: Txt2ImgRequest, user: str, scope: dict) -> dict:
        # 1. Translate and check what can be checked before waiting for the GPU.
        request, prompt, negative, sampler = self._base(req, **self._hires(req))
        units, resize_mode = self.control_units(req.alwayson_scripts)
        control = Control.build(request, units, resize_mode) if units else None

        def one(seed: int, job):
            if control is not None:
                return self.studio.control(replace(control, base=replace(request, seed=seed)), client=job.caller)
            return self.studio.txt2img(replace(request, seed=seed), client=job.caller)

        job, generated, maps, infos = self._batches(req, user, scope, "txt2img", request.seed, one)
        # 3. A1111's response: base64 PNGs, the request, and the info JSON string.
        return {
            "images": [b64_file(p) for p in (*generated, *maps)] if req.send_images else [],
            "parameters": req.model_dump(),
            "info": _json(self._info(req, prompt, negative, sampler, generated, infos, job)),
        }

    def img2img(self, req: Img2ImgRequest, user: str, scope: dict) -> dict:
        """Image to image, and inpainting when a ``mask`` is sent (A1111's one route for both)."""
        # 1. Translate and check everything before an image is decoded or the GPU is waited for.
        if not req.init_images:
            raise ParamError("edit_image_missing")
        if len(req.init_images) > 1:
            raise ParamError("api_unsupported", what="init_images with more than one image")
        for value in (req.init_images[0], req.mask):
            if _decoded_size(value) > MAX_UPLOAD_BYTES:
                raise ParamError("image_too_large", megapixels=MAX_INPUT_PIXELS // 1_000_000)
        if not 0 <= req.inpainting_fill < len(A1111_FILLS):
            raise ParamError("out_of_range", name="inpainting_fill", value=req.inpainting_fill, low=0,
                             high=len(A1111_FILLS) - 1)
        mode = str(req.resize_mode).strip().lower()
        resize_mode = RESIZE_MODES.get(mode, "stretch" if mode in ("3", "just resize (latent upscale)") else mode)
        request, prompt, negative, sampler = self._base(req)
        units, _ = self.control_units(req.alwayson_scripts)
        edit = Img2Img.build(request, image_bytes(req.init_images[0], missing="edit_image_missing"),
                             req.denoising_strength, resize_mode, units, save_inputs=False)
        inpaint = None
        if req.mask not in (None, ""):
            inpaint = Inpaint.build(edit, image_bytes(req.mask, missing="mask_missing"), req.mask_blur,
                                    A1111_FILLS[req.inpainting_fill], req.inpaint_full_res, req.inpaint_full_res_padding,
                                    bool(req.inpainting_mask_invert))

        def one(seed: int, job):
            base = replace(edit, base=replace(request, seed=seed))
            if inpaint is not None:
                return self.studio.inpaint(replace(inpaint, edit=base), client=job.caller)
            return self.studio.img2img(base, client=job.caller)

        job, generated, maps, infos = self._batches(req, user, scope, "img2img", request.seed, one)
        # 2. A1111's response; the input images are echoed only when asked (they can be large).
        parameters = req.model_dump()
        if not req.include_init_images:
            parameters.update(init_images=None, mask=None)
        info = self._info(req, prompt, negative, sampler, generated, infos, job)
        info["denoising_strength"] = req.denoising_strength
        return {
            "images": [b64_file(p) for p in (*generated, *maps)] if req.send_images else [],
            "parameters": parameters,
            "info": _json(info),
        }

    def _batches(self, req, user: str, scope: dict, kind: str, seed: int, one):
        """Run ``one(seed, job)`` ``req.n_iter`` times holding the GPU (the model override, every batch,
        switching back), seeds continuing across batches as in A1111. Returns (job, generated
        files, the last batch's extra files, infos)."""
        studio = self.studio
        address = (scope.get("client") or ("unknown", 0))[0]
        checkpoint = req.override_settings.get("sd_model_checkpoint")
        if checkpoint and not req.override_settings_restore_afterwards and not self.studio.team.is_admin(user):
            raise ParamError("admin_only", admins=self.studio.team.admin_names(self.S.list_sep), what=self.S.admin_what_model)
        job = self.studio.open_batch(user, kind, req.n_iter, address=address)
        on_disconnect(scope, lambda: self.studio.interrupt_batch(job))
        generated, maps, infos = [], [], []
        try:
            # The GPU: the lock UI jobs take, held for the whole request, so nothing interleaves.
            # The request waits for its turn like any job; interrupted (or its caller gone)
            # while waiting, it leaves.
            with self._turn(job):
                previous = None
                if checkpoint and not job.interrupted:
                    ref = self.model_ref(checkpoint)
                    if ref != studio.current_model():
                        previous = studio.current_model()
                        studio.switch_model(ref)
                try:
                    for number in range(req.n_iter):
                        if job.interrupted:
                            break
                        job.job_no = number
                        try:
                            paths, info = one(seed, job)
                        except JobCancelled:
                            job.interrupted = True
                            break
                        count = len(info["all_seeds"])
                        generated += paths[:count]
                        maps = paths[count:]
                        infos.append(info)
                        job.last_image = b64_file(paths[count - 1])
                        seed = info["all_seeds"][-1] + 1  # A1111: the next batch continues the seeds
                        # Between batches, someone else's job goes first (on the model they
                        # expect: a borrowed one is put back meanwhile).
                        if number + 1 < req.n_iter and studio.others_waiting():
                            borrowed = previous is not None and req.override_settings_restore_afterwards
                            if borrowed:
                                studio.switch_model(previous)
                            studio.give_way(job)
                            if borrowed:
                                studio.switch_model(ref)
                finally:
                    if previous is not None and req.override_settings_restore_afterwards:
                        studio.switch_model(previous)
        finally:
            self.studio.close_batch(job)
        return job, generated, maps, infos

    def _info(self, req, prompt, negative, sampler, generated, infos, job) -> dict:
        seeds = [s for info in infos for s in info["all_seeds"]]
        first = infos[0] if infos else {}
        infotexts = []
        for path in generated:
            with Image.open(path) as image:
                infotexts.append(image.info.get("parameters", ""))
        count = len(generated)
        return {
            "prompt": prompt, "all_prompts": [prompt] * count,
            "negative_prompt": negative, "all_negative_prompts": [negative] * count,
            "seed": seeds[0] if seeds else req.seed, "all_seeds": seeds,
            "subseed": -1, "all_subseeds": [-1] * count, "subseed_strength": 0,
            "width": first.get("width", req.width), "height": first.get("height", req.height),
            "sampler_name": sampler, "cfg_scale": req.cfg_scale, "steps": req.steps,
            "batch_size": req.batch_size, "n_iter": req.n_iter, "restore_faces": False,
            # A1111's: the checkpoint's name without its ending, and its short hash (a single file's)
            "sd_model_name": _stem(first.get("model", self.studio.current_model())),
            "sd_model_hash": self.studio.model_hash(),
            "styles": req.styles, "index_of_first_image": 0, "infotexts": infotexts,
            "job_timestamp": job.timestamp, "clip_skip": first.get("clip_skip", 1), "version": f"Danqing {_version()}",
            "extra_generation_params": {k: first[k] for k in ("loras", "controlnet") if first.get(k)},
            "interrupted": job.interrupted, "files": [f for info in infos for f in info["files"]],
            "seconds": round(sum(info["seconds"] for info in infos), 3),
            # What Danqing changed and says in the UI's summary (a translation, a flow model's own
            # sampler, an unused clip skip...), the first batch's
            "notices": first.get("notices") or {},
            # With --ray: the replica (process id) of the first batch and how many tries it took.
            **({"engine": first["engine"]} if first.get("engine") else {}),
        }

    # -- progress and interrupt ---------------------------------------------------------------
    def progress(self, user: str, skip_current_image: bool = False) -> dict:
        snap, job = self.studio.running_job()
        if snap is None or (self.accounts.required and snap["user"] != user):
            # Idle, or another user's job: with logins, its details are that user's alone.
            state = {"skipped": False, "interrupted": False, "job": "" if snap is None else "busy", "job_count": 0,
                     "job_timestamp": "", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
            return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
        step, total, rate = snap["step"], max(1, snap["total"]), snap["seconds_per_step"]
        job_count, job_no = (job.job_count, job.job_no) if job else (1, 0)
        progress = min(1.0, (job_no + step / total) / job_count)
        if rate is not None:
            eta = (total - step) * rate + (job_count - job_no - 1) * total * rate
        elif job is not None and progress > 0:
            elapsed = time.time() - job.started
            eta = elapsed / progress - elapsed
        else:
            eta = 0.0
        state = {
            "skipped": False, "interrupted": bool(job and job.interrupted), "job": job.kind if job else "ui",
            "job_count": job_count, "job_timestamp": job.timestamp if job else "", "job_no": job_no,
            "sampling_step": step, "sampling_steps": total,
        }
        # Another user's images are theirs: the preview goes only to the job's own API user.
        image = job.last_image if job and job.user == user and not skip_current_image else None
        return {"progress": round(progress, 4), "eta_relative": round(max(0.0, eta), 3), "state": state,
                "current_image": image, "textinfo": f"{step}/{total}"}

    def interrupt(self, user: str) -> dict:
        """Stops this user's jobs (running or waiting: the API's batches, and with logins their
        page jobs and training runs too), never another user's."""
        return {"interrupted": self.studio.interrupt(user)}

    # -- the other routes ---------------------------------------------------------------------
    def extra_single_image(self, req: ExtraSingleImageRequest, user: str, scope: dict) -> dict:
        if req.resize_mode != 0:
            raise ParamError("api_unsupported", what="resize_mode=1 (upscaling_resize_w/h)")
        name = self.upscaler(req.upscaler_1)
        data = image_bytes(req.image, missing="upscale_no_image")
        scale = int(req.upscaling_resize) if float(req.upscaling_resize).is_integer() else req.upscaling_resize
        request = Upscale.from_fields(upscaler=name, scale=scale)
        job = self.studio.open_batch(user, "extras", address=(scope.get("client") or ("unknown", 0))[0])
        on_disconnect(scope, lambda: self.studio.interrupt_batch(job))
        try:
            paths, info = self.studio.upscale_images([data], request, client=job.caller)
        finally:
            self.studio.close_batch(job)
        with Image.open(paths[0]) as image:
            text = image.info.get("parameters", "")
        return {"html_info": text, "image": b64_file(paths[0])}

    def png_info(self, req: PngInfoRequest) -> dict:
        if not req.image.strip():
            return {"info": "", "items": {}, "parameters": {}}
        # The text chunks only: the pixels are never decoded.
        info = read_info(image_bytes(req.image, missing="image_unreadable"))
        text = read_parameters_of(info) or ""
        items = {k: v[:MAX_PARAMETERS_CHARS] for k, v in info.items() if isinstance(v, str) and k != "parameters"}
        parameters: dict = {}
        if text:
            parsed = parse_parameters(text)
            parameters = {"Prompt": parsed["prompt"], "Negative prompt": parsed["negative_prompt"], **parsed["fields"]}
            size = parsed["fields"].get("Size", "")
            if re.fullmatch(r"\d+x\d+", size):
                parameters["Size-1"], parameters["Size-2"] = size.split("x")
        return {"info": text, "items": items, "parameters": parameters}

    def detect(self, req: DetectRequest, caller) -> dict:
        module = req.controlnet_module.strip().lower()
        if module != "none" and module not in CONTROL_MODULES:
            raise ParamError("unknown_control_kind", value=module[:20])
        if not req.controlnet_input_images:
            raise ParamError("control_image_missing")
        if len(req.controlnet_input_images) > MAX_DETECT_IMAGES:
            raise ParamError("out_of_range", name="controlnet_input_images", value=len(req.controlnet_input_images),
                             low=1, high=MAX_DETECT_IMAGES)
        if any(_decoded_size(encoded) > MAX_UPLOAD_BYTES for encoded in req.controlnet_input_images):
            raise ParamError("image_too_large", megapixels=MAX_INPUT_PIXELS // 1_000_000)
        kind, keyword = CONTROL_MODULES.get(module, ("canny", None))
        low = _threshold(req.controlnet_threshold_a, 100, "controlnet_threshold_a")
        high = _threshold(req.controlnet_threshold_b, 200, "controlnet_threshold_b")
        estimator = self.estimator(keyword) if kind == "depth" else ""
        images = []
        for encoded in req.controlnet_input_images:  # one image decoded at a time
            unit = {"kind": kind, "image": image_bytes(encoded), "is_map": module == "none",
                    "low_threshold": low, "high_threshold": high, "estimator": estimator}
            images.append(b64_image(self.studio.preview_control(ControlUnit.from_fields(unit), client=caller)))
        return {"images": images, "info": "Success"}

    def options(self) -> dict:
        return {
            "sd_model_checkpoint": self.studio.current_model(),
            "sd_checkpoint_hash": self.studio.model_hash(),
            "sd_vae": A1111_VAE_NAMES.get(self.studio.current_vae(), self.studio.current_vae()),
            "samples_format": "png",
            "outdir_samples": "outputs",  # never a server path
            "CLIP_stop_at_last_layers": self.clip_skip,
        }

    def set_options(self, req: OptionsRequest, user: str) -> None:
        if req.sd_model_checkpoint:
            if not self.studio.team.is_admin(user):
                raise ParamError("admin_only", admins=self.studio.team.admin_names(self.S.list_sep), what=self.S.admin_what_model)
            self.studio.switch_model(self.model_ref(req.sd_model_checkpoint))
        if req.CLIP_stop_at_last_layers is not None:
            if not self.studio.team.is_admin(user):
                raise ParamError("admin_only", admins=self.studio.team.admin_names(self.S.list_sep), what=self.S.admin_what_clip_skip)
            value = req.CLIP_stop_at_last_layers
            if not 1 <= value <= MAX_CLIP_SKIP:
                raise ParamError("out_of_range", name="CLIP_stop_at_last_layers", value=value, low=1, high=MAX_CLIP_SKIP)
            self.clip_skip = value
        if req.sd_vae:
            if not self.studio.team.is_admin(user):
                raise ParamError("admin_only", admins=self.studio.team.admin_names(self.S.list_sep), what=self.S.admin_what_vae)
            choice = {v: k for k, v in A1111_VAE_NAMES.items()}.get(req.sd_vae)
            self.studio.set_vae(choice or pick_name(req.sd_vae, self.studio.vae_choices()))

    def sd_vaes(self) -> list[dict]:
        return [{"model_name": _stem(name), "filename": name} for name in self.studio.vae_choices()]

    def sd_models(self) -> list[dict]:
        return [
            {"title": c["ref"], "model_name": _stem(c["ref"]), "hash": c["hash"], "sha256": None,
             "filename": c["ref"], "config": None}
            for c in self.studio.model_choices()
        ]

    def loras(self) -> list[dict]:
        return [
            {"name": _stem(row["name"]), "alias": _stem(row["name"]), "path": row["name"],
             "metadata": {"hash": row.get("hash"), "trigger_words": row.get("trigger_words"),
                          "base_model": row.get("base_model")}}
            for row in self.studio.loras()
        ]

    def upscalers(self) -> list[dict]:
        return [
            {"name": name, "model_name": _stem(name), "model_path": name, "model_url": None, "scale": _scale_of(name)}
            for name in self.studio.upscalers()
        ]

    def prompt_styles(self) -> list[dict]:
        styles = self.styles.styles() if self.styles is not None else {}
        return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt} for s in styles.values()]


def _json(value) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)


def _version() -> str:
    from pipelines.studio import VERSION  # the Studio exists, so torch is already imported

    return VERSION


def build_router(studio, accounts: Accounts | None = None, lang: str | None = None, styles=None) -> APIRouter:
    """Every A1111-compatible route (plus /docs and /openapi.json) over one Studio."""
    S = load(lang)
    accounts = accounts or Accounts()
    api = SdApi(studio, S, styles, accounts)
    login = _login(accounts, S)
    router = APIRouter(route_class=_route_class(S), dependencies=[Depends(login)])
    v1 = "/sdapi/v1"

    @router.post(f"{v1}/txt2img", tags=["sdapi"], summary="Text to image (ControlNet units via alwayson_scripts)")
    def txt2img(req: Txt2ImgRequest, request: Request, user: str = Depends(login)) -> dict:
        return api.txt2img(req, user, request.scope)

    @router.post(f"{v1}/img2img", tags=["sdapi"],
                 summary="Image to image; inpainting with `mask` (ControlNet units via alwayson_scripts)")
    def img2img(req: Img2ImgRequest, request: Request, user: str = Depends(login)) -> dict:
        return api.img2img(req, user, request.scope)

    @router.get(f"{v1}/progress", tags=["sdapi"], summary="Progress, ETA and the newest image of the running job")
    async def progress(skip_current_image: bool = False, user: str = Depends(login)) -> dict:
        return api.progress(user, skip_current_image)

    @router.post(f"{v1}/interrupt", tags=["sdapi"], summary="Stop your own API jobs")
    async def interrupt(user: str = Depends(login)) -> dict:
        return api.interrupt(user)

    @router.post(f"{v1}/extra-single-image", tags=["sdapi"], summary="Upscale one image with an ESRGAN model")
    def extra_single_image(req: ExtraSingleImageRequest, request: Request, user: str = Depends(login)) -> dict:
        return api.extra_single_image(req, user, request.scope)

    @router.post(f"{v1}/png-info", tags=["sdapi"], summary="Read the generation parameters of a PNG")
    def png_info(req: PngInfoRequest) -> dict:
        return api.png_info(req)

    @router.get(f"{v1}/options", tags=["sdapi"], summary="Settings (sd_model_checkpoint)")
    def get_options() -> dict:
        return api.options()

    @router.post(f"{v1}/options", tags=["sdapi"], summary="Switch the base model with sd_model_checkpoint")
    def set_options(req: OptionsRequest, user: str = Depends(login)) -> None:
        api.set_options(req, user)

    @router.get(f"{v1}/sd-vae", tags=["sdapi"], summary="External VAEs (models/vae)")
    def sd_vae() -> list[dict]:
        return api.sd_vaes()

    @router.get(f"{v1}/sd-models", tags=["sdapi"], summary="Base models")
    def sd_models() -> list[dict]:
        return api.sd_models()

    @router.post(f"{v1}/refresh-checkpoints", tags=["sdapi"], summary="No-op: lists are read fresh on every call")
    def refresh_checkpoints() -> None:
        return None

    @router.get(f"{v1}/samplers", tags=["sdapi"], summary="Samplers by their A1111 names")
    def samplers() -> list[dict]:
        return [{"name": n, "aliases": SAMPLER_ALIASES.get(n, []), "options": {}} for n in SAMPLER_NAMES]

    @router.get(f"{v1}/schedulers", tags=["sdapi"], summary="Schedule types by their A1111 names (scheduler field)")
    def schedulers() -> list[dict]:
        return [{"name": aliases[0], "label": name, "aliases": aliases[1:] or None} for name, aliases in SCHEDULE_ALIASES.items()]

    @router.get(f"{v1}/loras", tags=["sdapi"], summary="LoRA files in models/lora (use as <lora:name:weight>)")
    def loras() -> list[dict]:
        return api.loras()

    @router.post(f"{v1}/refresh-loras", tags=["sdapi"], summary="No-op: lists are read fresh on every call")
    def refresh_loras() -> None:
        return None

    @router.get(f"{v1}/upscalers", tags=["sdapi"], summary="ESRGAN upscalers in models/upscalers")
    def upscalers() -> list[dict]:
        return api.upscalers()

    @router.get(f"{v1}/prompt-styles", tags=["sdapi"], summary="Prompt styles from the extensions")
    def prompt_styles() -> list[dict]:
        return api.prompt_styles()

    # Danqing's own: 模型下载 (pipelines/downloads.py).
    d1 = "/danqing/v1/downloads"

    def downloader(user: str) -> None:
        """Only who may download asks the hub (no one else makes the server query it) or sees
        the downloads (who fetched which repository)."""
        if not studio.team.is_admin(user):
            raise ParamError("admin_only", admins=studio.team.admin_names(S.list_sep), what=S.admin_what_download)

    @router.get(f"{d1}/files", tags=["danqing"], summary="A repository's files with sizes (nothing is downloaded; "
                "admins when several accounts)")
    def download_files(source: str = "huggingface", repo: str = "", user: str = Depends(login)) -> list[dict]:
        downloader(user)
        return studio.download_plan(source, repo)

    @router.get(d1, tags=["danqing"], summary="Downloads: state, bytes so far, total, error (admins when several accounts)")
    def downloads(user: str = Depends(login)) -> list[dict]:
        downloader(user)
        return studio.download_rows()

    @router.post(d1, tags=["danqing"], summary="Start a download into models/<kind>/ (admins when several accounts)")
    def start_download(req: DownloadRequest, user: str = Depends(login)) -> dict:
        downloader(user)
        return studio.start_download(req.source, req.repo, req.kind, req.file, req.sha256, user=user)

    @router.post(d1 + "/{job_id}/cancel", tags=["danqing"], summary="Cancel a download (its part file is removed)")
    def cancel_download(job_id: str, user: str = Depends(login)) -> dict:
        return studio.cancel_download(job_id, user, admin=studio.team.is_admin(user))

    # Danqing's own: the GPU line (pipelines/jobs.py), each job's place and estimated wait.
    @router.get("/danqing/v1/queue", tags=["danqing"], summary="The GPU line: running and waiting jobs in the order they "
                "will go, place and estimated wait (your own in full; everyone's for an administrator)")
    def queue_view(request: Request, user: str = Depends(login)) -> list[dict]:
        return studio.queue_view(user, (request.scope.get("client") or ("unknown", 0))[0])

    @router.get("/danqing/v1/queue/unfinished", tags=["danqing"], summary="Your jobs that a server stop (restart, "
                "crash) cut off before they finished: when accepted and what kind; each told once")
    def unfinished_jobs(request: Request, user: str = Depends(login)) -> list[dict]:
        return studio.unfinished_jobs(user, (request.scope.get("client") or ("unknown", 0))[0])

    @router.post("/danqing/v1/queue/{job_id}/cancel", tags=["danqing"], summary="Cancel a job of yours (any, for an "
                 "administrator): a waiting one leaves the line at once")
    def cancel_job(job_id: str, request: Request, user: str = Depends(login)) -> dict:
        return studio.cancel_job(job_id, user, (request.scope.get("client") or ("unknown", 0))[0])

    @router.get("/danqing/v1/usage", tags=["danqing"], summary="Per user over days (YYYY-MM-DD): images made, GPU jobs, "
                "GPU seconds, failed and cancelled jobs (administrators)")
    def usage(day_from: str = "", day_to: str = "", user: str = Depends(login)) -> list[dict]:
        return studio.usage(user, day_from, day_to)

    # Danqing's own: 历史 (pipelines/history.py). Each user's own images; the team's shared ones
    # with scope=team; everyone's with scope=all for an administrator; scope=trash.
    h1 = "/danqing/v1/history"

    @router.get(h1, tags=["danqing"], summary="Saved images, newest first: q (any part of a prompt, a model or LoRA "
                "name, a seed), filters, pages")
    def history(q: str = "", scope: str = "mine", model: str = "", sampler: str = "", task: str = "",
                day_from: str = "", day_to: str = "", offset: int = 0, limit: int = 48,
                user: str = Depends(login)) -> dict:
        page = studio.history(user, scope, q, model=model, sampler=sampler, task=task, day_from=day_from,
                              day_to=day_to, offset=offset, limit=limit)
        mine = studio.outputs_owner(user)
        return {"total": page.total, "offset": page.offset, "limit": page.limit,
                "images": [_history_row(e, mine) for e in page.entries]}

    @router.get(h1 + "/{entry_id}/image", tags=["danqing"], summary="One saved image (PNG with its parameters)",
                response_class=FileResponse)
    def history_image(entry_id: int, user: str = Depends(login)):
        entry = studio.history_entry(entry_id, user)
        return FileResponse(studio.history_file(entry), media_type="image/png")

    @router.post(h1 + "/{entry_id}/delete", tags=["danqing"], summary="Move one of your images to your trash")
    def history_delete(entry_id: int, user: str = Depends(login)) -> dict:
        studio.history_delete(entry_id, user)
        return {"id": entry_id, "trashed": True}

    @router.post(h1 + "/{entry_id}/restore", tags=["danqing"], summary="Bring one of your images back from the trash")
    def history_restore(entry_id: int, user: str = Depends(login)) -> dict:
        studio.history_restore(entry_id, user)
        return {"id": entry_id, "trashed": False}

    @router.post(h1 + "/{entry_id}/share", tags=["danqing"], summary="Show one of your images to the team (or not)")
    def history_share(entry_id: int, shared: bool = True, user: str = Depends(login)) -> dict:
        studio.history_share(entry_id, user, shared)
        return {"id": entry_id, "shared": shared}

    @router.get("/controlnet/version", tags=["controlnet"], summary="sd-webui-controlnet API version")
    def controlnet_version() -> dict:
        return {"version": 2}

    @router.get("/controlnet/model_list", tags=["controlnet"], summary="ControlNet models in models/controlnet")
    def controlnet_models() -> dict:
        return {"model_list": studio.controlnets()}

    @router.get("/controlnet/module_list", tags=["controlnet"], summary="Preprocessors (modules)")
    def controlnet_modules(alias_names: bool = False) -> dict:
        return {"module_list": ["none", *CONTROL_MODULES]}

    @router.post("/controlnet/detect", tags=["controlnet"], summary="Preview a preprocessor's control map")
    def controlnet_detect(req: DetectRequest, request: Request, user: str = Depends(login)) -> dict:
        address = (request.scope.get("client") or ("unknown", 0))[0]
        return api.detect(req, Caller(client=f"detect-{id(request):x}", user=user, address=address))

    # The OpenAPI page documents only these routes (Gradio's own are at /?view=api).
    schema: dict = {}

    @router.get("/openapi.json", include_in_schema=False)
    def openapi() -> dict:
        if not schema:
            schema.update(get_openapi(
                title="Danqing A1111-compatible API", version=_version(), routes=router.routes,
                description="AUTOMATIC1111 `/sdapi/v1` and sd-webui-controlnet routes implemented by Danqing; "
                            "unknown request fields are ignored, invalid values get a 422 JSON error.",
            ))
            if accounts.required:
                schema.setdefault("components", {})["securitySchemes"] = {"basic": {"type": "http", "scheme": "basic"}}
                schema["security"] = [{"basic": []}]
        return schema

    @router.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Danqing API")

    return router


def api_app_kwargs(studio, accounts: Accounts | None = None, lang: str | None = None, styles=None) -> dict:
    """Keyword arguments for ``demo.launch(app_kwargs=...)``: Gradio builds its FastAPI app with
    these routes first, so they share its server, port and lifetime, and every launch option
    (login page, file limits, ...) stays as it is."""
    router = build_router(studio, accounts=accounts, lang=lang, styles=styles)
    return {"routes": list(router.routes), "openapi_url": None}
