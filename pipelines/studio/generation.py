"""Generating and editing: text to image, ControlNet, 图生图, 局部重绘, 扩图, upscaling,
saved with their A1111 parameters (formats/infotext.py) and the AIGC label.

A part of the studio (pipelines/studio/__init__.py): it works on the attributes the Studio
sets up (store, outputs, jobs, ...); ui/ and api/ see it through pipelines/contracts.py."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

from PIL import Image

from ..errors import ParamError
from ..formats import infotext
from ..formats.images import image_size, open_upload
from ..formats.pnginfo import read_parameters
from ..formats.weights import file_hash
from ..jobs import as_caller
from ..requests import (
    INPAINT_FILL_NAMES,
    MAX_UPSCALE_IMAGES,
    Caller,
    Control,
    ControlUnit,
    Img2Img,
    Inpaint,
    Outpaint,
    Txt2Img,
    Upscale,
    check_output,
    image_given,
)
from ..tasks import annotators, controlnet, expand, lora, registry, translate, upscale
from ..tasks.prepare import prepare, prompt_language
from ..tasks.denoise import Generated
from ..tasks.schedulers import step_eta
from .common import VERSION

log = logging.getLogger(__name__)


def _unit_fields(units, resize_mode: str) -> dict:
    """A1111's ``ControlNet N`` parameter fields of the units."""
    return {
        f"ControlNet {i}": (
            f"Module: {u.kind if not u.is_map else 'none'}, Model: {u.model}, Weight: {u.weight}, "
            f"Guidance Start: {u.guidance_start}, Guidance End: {u.guidance_end}, Resize Mode: {resize_mode}"
        )
        for i, u in enumerate(units)
    }


def _model_field(ref: str) -> str:
    """The infotext's ``Model``: a folder's or hub id's name; a single file's stem, as A1111
    writes it (with ``Model hash`` beside it, that is how Civitai recognises the model)."""
    if Path(ref).is_absolute():
        ref = Path(ref).name
    for ending in (".safetensors", ".ckpt"):
        if ref.lower().endswith(ending):
            return Path(ref).name[: -len(ending)]
    return ref


_NOT_IN_INFO = ("hires_upscaler", "hires_scale", "draft", "hires_pass", "hires_strength", "hires_steps")


class Generation:

    def _generate(self, name: str, request, cancel, hook, on_preview, user: str = "") -> Generated:
        """Run the generation task ``name`` (tasks/registry.py) here or on a replica, its request
        prepared first where the model is (tasks/prepare.py: 提示词扩写, Chinese put into English
        for an English-only encoder, a flow model's sampler, clip skip): the task, the saved
        parameters and 历史 get the effective request, the notices say what changed."""
        if self.remote is None:
            request, notices = prepare(self.store, request, user)
            result = registry.get(name)(self.store, request, cancel=cancel, on_step=hook, on_preview=on_preview)
            result.notices.update(notices)
            return result
        # The replica prepares the request itself (it holds the model): this user's edited
        # translations go with the job.
        result, facts = self.remote.run(name, request, model=self.current_model(), vae=self.current_vae(),
                                        edits=translate.edits_of(user),
                                        cancel=cancel, on_step=hook, on_preview=on_preview)
        result.facts = facts
        return result

    # -- generation -------------------------------------------------------------------------
    def txt2img(self, request: Txt2Img, client: Caller | str = "local", on_step=None,
                on_preview=None, on_wait=None) -> tuple[list[Path], dict]:
        """Generate, (upscale,) save. Returns the saved files and the info dict.
        ``client``: who asks (pipelines.requests.Caller, or just a client id for the stop switch).
        ``on_preview(image, step, total)`` gets live previews while it denoises; ``on_wait(place,
        seconds)`` the job's place in the line and the estimated wait before it starts."""
        caller = as_caller(client)
        self.outputs.check_quota(caller.user)
        with self.jobs.run(caller, on_step, kind="txt2img", on_wait=on_wait) as (cancel, hook):
            result = self._generate("txt2img", request, cancel, hook, on_preview, caller.user)
            return self._save(result, {"draft": request.draft}, user=caller.user)

    def control(self, request: Control, client: Caller | str = "local", on_step=None,
                on_preview=None, on_wait=None) -> tuple[list[Path], dict]:
        """ControlNet generation with one to three units; the control maps are saved too."""
        caller = as_caller(client)
        self.outputs.check_quota(caller.user)
        with self.jobs.run(caller, on_step, kind="controlnet", on_wait=on_wait) as (cancel, hook):
            name = "control_hires" if request.base.hires_pass else "controlnet"
            result = self._generate(name, request, cancel, hook, on_preview, caller.user)
            paths, info = self._save(result, {}, _unit_fields(request.units, request.resize_mode), user=caller.user)
            self._save_beside(paths, info, result, request.units, request.resize_mode, caller.user)
            return paths, info

    # -- editing --------------------------------------------------------------------------
    def img2img(self, request: Img2Img, client: Caller | str = "local", on_step=None,
                on_preview=None, on_wait=None) -> tuple[list[Path], dict]:
        """图生图: the input denoised from ``request.strength`` (ControlNets optional)."""
        return self._edit("img2img", request, request, {}, client, on_step, on_preview, on_wait)

    def inpaint(self, request: Inpaint, client: Caller | str = "local", on_step=None,
                on_preview=None, on_wait=None) -> tuple[list[Path], dict]:
        """局部重绘: the masked area repainted, every other pixel kept."""
        fields = {
            "Mask blur": request.mask_blur,
            "Inpaint area": "Only masked" if request.full_res else "Whole picture",
            **({"Masked area padding": request.padding} if request.full_res else {}),
            "Masked content": INPAINT_FILL_NAMES[request.fill],
            **({"Mask mode": "Inpaint not masked"} if request.invert else {}),
        }
        # Whole-picture inpainting is saved at the source's own size: counted before it starts.
        if not request.full_res and image_given(request.edit.image):
            width, height = image_size(request.edit.image)
            saved = request.edit.base.num_images_per_prompt + (2 if request.edit.save_inputs else 0)
            check_output(width, height, width * height * saved)
        return self._edit("inpaint", request, request.edit, fields, client, on_step, on_preview, on_wait)

    def outpaint(self, request: Outpaint, client: Caller | str = "local", on_step=None,
                 on_preview=None, on_wait=None) -> tuple[list[Path], dict]:
        """扩图: the canvas grown, the new area filled to continue the picture."""
        def fields(result: Generated) -> dict:  # the sides as grown (to multiples of 8, or scaled to fit)
            left, right, up, down = result.notices["outpaint"]
            return {"Outpaint": f"left {left} right {right} up {up} down {down}",
                    "Masked content": INPAINT_FILL_NAMES[request.fill]}

        return self._edit("outpaint", request, request.edit, fields, client, on_step, on_preview, on_wait)

    def _edit(self, name: str, request, edit_request: Img2Img, fields, client, on_step, on_preview, on_wait):
        """Run the editing task ``name`` (tasks/registry.py) in the job context and save it.
        ``fields``: the mode's A1111 parameter fields, or a function of the result giving them
        (when the task decides them)."""
        caller = as_caller(client)
        self.outputs.check_quota(caller.user)
        with self.jobs.run(caller, on_step, kind=registry.kind_of(name), on_wait=on_wait) as (cancel, hook):
            result = self._generate(name, request, cancel, hook, on_preview, caller.user)
            fields = {"Denoising strength": edit_request.strength, **(fields(result) if callable(fields) else fields),
                      **_unit_fields(edit_request.units, edit_request.resize_mode)}
            extra = {"mode": name, "denoising_strength": edit_request.strength,
                     "resize_mode": edit_request.resize_mode}
            paths, info = self._save(result, extra, fields, user=caller.user)
            self._save_beside(paths, info, result, edit_request.units, edit_request.resize_mode, caller.user,
                              inputs=edit_request.save_inputs)
            return paths, info

    def _save_beside(self, paths: list[Path], info: dict, result: Generated, units, resize_mode: str, user: str,
                     inputs: bool = False) -> None:
        """The ControlNet maps (and, when asked, an edit's input and mask) saved after the
        results, without the AIGC label (nothing in them was generated)."""
        seed = result.request.seed
        for u, image in zip(units, result.maps):
            paths.append(self.outputs.save(image, f"control map: {u.kind}", seed, suffix=f"-{u.kind}-map",
                                           user=user, generated=False))
        if inputs:
            for image, role in result.inputs:
                paths.append(self.outputs.save(image, f"{role} image", seed, suffix=f"-{role}", user=user,
                                               generated=False))
        info["files"] = [p.name for p in paths]
        if units:
            info["controlnet"] = [
                {"kind": u.kind, "model": u.model, "weight": u.weight, "guidance_start": u.guidance_start,
                 "guidance_end": u.guidance_end, "is_map": u.is_map}
                for u in units
            ]
            info["resize_mode"] = resize_mode

    def _save(self, result: Generated, extra: dict, fields: dict | None = None,
              user: str = "") -> tuple[list[Path], dict]:
        """Save each image (and its upscaled twin) with A1111 parameters; build the info dict."""
        params = result.request
        model = self.current_model()
        facts = result.facts or {"model_hash": self.store.model_hash, "vae_ref": self.store.vae_ref,
                                 "vae_hash": self.store.vae_hash}
        used = result.notices.get("embeddings") or {}
        ti_hashes = ", ".join(f"{name}: {file_hash(self.store.folders.resolve('embeddings', file))}"
                              for name, file in used.items())
        lora_tags = []
        if params.loras:
            # Tags name the LoRA as A1111 and Civitai read it: the file's name without its ending
            # (with its folder only when two files share that name).
            rows = self.loras()
            hashes = {}
            for row in rows:  # a <lora:tag> may name the file, its stem or its folder
                for key in (row["name"], Path(row["name"]).stem, row["name"].split("/", 1)[0]):
                    hashes.setdefault(key, row["hash"])
            listed = [row["name"] for row in rows]
            lora_tags = [(lora.tag_name(name, listed), hashes.get(name, ""), weight) for name, weight in params.loras]
        prompt, base_fields = infotext.fields_of(
            params, model=_model_field(model), model_hash=facts["model_hash"],
            vae=Path(facts["vae_ref"]).name if facts["vae_ref"] else None, vae_hash=facts["vae_hash"],
            mode_fields=fields, eta=step_eta(params.sampler, params.eta), ti_hashes=ti_hashes, lora_tags=lora_tags,
            hires_pass=result.hires_pass, version=f"Danqing {VERSION}")
        if result.notices.get("expansion"):  # the prompter's name: reads back as "off" (the prompt holds its words)
            base_fields["Prompt expansion"] = result.notices["expansion"]["prompter"]
            base_fields[infotext.VERSION_KEY] = base_fields.pop(infotext.VERSION_KEY)
        translation = result.notices.get("translation") or {}
        if translation.get("english_prompt") is not None:  # the Chinese the designer typed, beside the English used
            base_fields["Original prompt"] = translation["prompt"]
            if translation.get("negative_prompt"):
                base_fields["Original negative prompt"] = translation["negative_prompt"]
            base_fields["Translator"] = translation["translator"]
            base_fields[infotext.VERSION_KEY] = base_fields.pop(infotext.VERSION_KEY)  # last, as A1111 writes it
        hires = result.hires
        paths: list[Path] = []
        first_text = ""
        for i, (image, seed) in enumerate(zip(result.images, result.seeds)):
            text = infotext.write(prompt, params.negative_prompt, base_fields, seed)
            first_text = first_text or text
            paths.append(self.outputs.save(image, text, seed, user=user))
            if hires is not None:
                text = infotext.write(prompt, params.negative_prompt, base_fields, seed,
                                      **{"Hires upscaler": hires.upscaler, "Hires upscale": hires.scale})
                paths.append(self.outputs.save(result.upscaled[i], text, seed, suffix=f"-x{hires.scale}", user=user))
        info = {
            **{k: v for k, v in asdict(params).items() if k not in _NOT_IN_INFO},
            "seed": params.seed,
            "all_seeds": result.seeds,
            "model": model,
            **({"vae": facts["vae_ref"]} if facts["vae_ref"] else {}),
            **({"engine": {"replica": result.facts["replica"], "attempts": result.facts["attempts"]}}
               if result.facts else {}),
            "seconds": round(result.seconds + result.upscale_seconds, 3),
            "generation_seconds": round(result.seconds, 3),
            "notices": result.notices,
            "files": [p.name for p in paths],
            "infotext": first_text,  # the first image's A1111 parameters text
            **extra,
        }
        if hires is not None:
            info.update(upscaler=hires.upscaler, upscale=hires.scale, upscale_seconds=round(result.upscale_seconds, 3))
        if result.hires_pass is not None:
            info["hires"] = {"upscaler": result.hires_pass, "scale": params.hires_scale, "strength": params.hires_strength,
                             "steps": params.hires_steps or params.num_inference_steps,
                             "size": list(params.hires_size())}
        log.info("%dx%d %d steps seed %d: %.2fs", params.width, params.height, params.num_inference_steps, params.seed, info["seconds"])
        return paths, info

    # -- Chinese prompts on English-only models ----------------------------------------------
    def translators(self) -> list[str]:
        """Translation models in models/translators (tasks/translate.py)."""
        return translate.list_translators(self.store)

    def expand_prompt(self, prompt: str, seed: int, client: Caller | str = "local") -> str:
        """提示词扩写 before a run: ``prompt`` with a local prompter's words after it (seeded by
        ``seed``; in the language the loaded model reads), as one job of the GPU queue."""
        with self.jobs.run(as_caller(client), kind="expand") as (cancel, _hook):
            if self.remote is not None:  # --ray: where the model is (and the GPU for the prompter)
                return self.remote.run("expand", {"prompt": prompt, "seed": int(seed)}, model=self.current_model(),
                                       vae=self.current_vae(), cancel=cancel)[0]
            return expand.expand_prompt(self.store, prompt, int(seed), prompt_language(self.store))[0]

    def prompters(self) -> list[str]:
        """Instruct models in models/prompters (tasks/expand.py)."""
        return expand.list_prompters(self.store)

    def edit_translation(self, prompt: str, english: str, client: Caller | str = "local") -> None:
        """Use ``english`` for the Chinese ``prompt`` from now on, for this user only (the
        designer's edit of the translation shown to them); empty: back to the translator's."""
        translate.remember_edit(prompt, english, as_caller(client).user)

    # -- ControlNet maps ----------------------------------------------------------------------
    def preview_control(self, unit: ControlUnit, client: Caller | str = "local") -> Image.Image:
        """The control map of one unit (the preview beside the control image). A depth map runs
        a model, so it waits for the GPU like any job."""
        if unit.kind == "depth" and not unit.is_map:
            with self.jobs.run(client, kind="depth"):
                return controlnet.control_map(self.store, unit)
        return controlnet.control_map(self.store, unit)

    def controlnets(self) -> list[str]:
        return controlnet.list_controlnets(self.store)

    def depth_estimators(self) -> list[str]:
        return annotators.list_depth_estimators(self.store)

    # -- super-resolution -------------------------------------------------------------------
    def upscale_images(self, images: list, request: Upscale, client: Caller | str = "local", on_step=None,
                       on_wait=None):
        """Upscale uploads (paths, bytes or PIL images; checked before decoding) and save them."""
        caller = as_caller(client)
        if not images:
            raise ParamError("upscale_no_image")
        if len(images) > MAX_UPSCALE_IMAGES:
            raise ParamError("upscale_too_many", count=len(images), limit=MAX_UPSCALE_IMAGES)
        if request.upscaler not in self.upscalers():
            raise ParamError("unknown_model_name", kind="upscalers", name=str(request.upscaler)[:80])
        self._check_inputs(images, caller.user)
        # What it will write, from the headers, before it waits for the GPU.
        total = 0
        for source in images:
            width, height = image_size(source)
            total += width * height * request.scale ** 2
            check_output(width * request.scale, height * request.scale, total)
        self.outputs.check_quota(caller.user)
        paths, started = [], time.perf_counter()
        with self.jobs.run(caller, on_step, kind="upscale", on_wait=on_wait) as (cancel, hook):
            for source in images:
                image = open_upload(source)  # one decoded image at a time
                own_name = Path(source).stem if isinstance(source, (str, Path)) else None
                big = upscale.upscale(self.store, image, request, cancel=cancel, on_step=hook)
                text = read_parameters(image) or ""
                fields = {"Postprocess upscaler": request.upscaler, "Postprocess upscale by": request.scale,
                          "Version": f"Danqing {VERSION}"}
                text = (text + "\n" if text else "") + ", ".join(f"{k}: {v}" for k, v in fields.items())
                paths.append(self.outputs.save(big, text, 0, suffix=f"-x{request.scale}", user=caller.user,
                                               name=own_name))
        return paths, {"upscaler": request.upscaler, "scale": request.scale,
                       "seconds": round(time.perf_counter() - started, 3), "files": [p.name for p in paths]}

    def upscalers(self) -> list[str]:
        return upscale.list_upscalers(self.store)
