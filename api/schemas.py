"""Request bodies of the A1111-compatible API, with A1111's field names and defaults.

Only the fields Danqing implements are declared; every model ignores unknown fields, as A1111
does, so clients that send A1111's full request (``restore_faces``, ``subseed``, ...) work.
Value ranges are checked later by the same validators the UI uses (pipelines/requests.py), so the
API and the UI refuse exactly the same requests with the same messages.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from pipelines.requests import Txt2Img, declared_fields
from strings import EN


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Txt2ImgFields(_Request):
    prompt: str = Field("", description="Prompt; `<lora:name:weight>` tags select LoRAs from models/lora.")
    negative_prompt: str = ""
    styles: list[str] = Field(default_factory=list, description="Prompt styles (see /sdapi/v1/prompt-styles); unknown names are skipped.")
    seed: int = Field(-1, description="-1 picks a random seed; image i of the request gets seed + i.")
    sampler_name: str | None = Field(None, description="An A1111 sampler name from /sdapi/v1/samplers (default DPM++ 2M Karras).")
    sampler_index: str | None = Field(None, description="Older name of sampler_name.")
    scheduler: str | None = Field(None, description="A1111 1.9+ (see /sdapi/v1/schedulers): 'Automatic', 'Karras' ('DPM++ 2M' + 'Karras' is 'DPM++ 2M Karras'), 'SGM Uniform' (trailing timesteps: Hyper-SD, TCD).")
    eta: float | None = Field(None, description="The sampler's eta, 0 to 1 (TCD's gamma, default 0.3; DDIM's eta). None: the sampler's default.")
    batch_size: int = Field(1, description="Images per batch (one denoising run).")
    n_iter: int = Field(1, description="Batches run one after another; seeds continue across batches.")
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    override_settings: dict[str, Any] = Field(default_factory=dict, description="sd_model_checkpoint and CLIP_stop_at_last_layers are used.")
    override_settings_restore_afterwards: bool = True
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict, description="Only `controlnet` with its `args` units is used.")
    send_images: bool = True
    save_images: bool = Field(True, description="Ignored: Danqing always saves images with their metadata and AIGC label.")
    enable_hr: bool = Field(False, description="Hires fix: upscale, then denoise again (text to image only).")
    hr_scale: float = Field(2.0, description="Hires fix upscale factor (1 to 4).")
    hr_upscaler: str | None = Field("Latent", description="'Latent', or a name from /sdapi/v1/upscalers.")
    hr_second_pass_steps: int = Field(0, description="Steps of the second pass (0: as many as `steps`).")
    hr_resize_x: int = Field(0, description="Target width instead of hr_scale (0: use hr_scale).")
    hr_resize_y: int = Field(0, description="Target height instead of hr_scale (0: use hr_scale).")
    denoising_strength: float | None = Field(None, description="Hires fix: strength of the second pass (default 0.7).")


def _declared() -> dict:
    """The fields Txt2Img declares itself (``requests.param`` with an A1111 name), as schema
    fields: a new generation parameter reaches the A1111 API with no code of its own here."""
    out = {}
    for f in declared_fields(Txt2Img):
        name = f.metadata["a1111"]
        if name:
            kind = int if f.type in (int, "int") else bool if f.type in (bool, "bool") else float
            low, high = f.metadata["range"]
            text = EN.get(f.metadata["info"]) or EN.get(f.metadata["label"], "")
            out[name] = (kind, Field(f.default, description=f"{text} ({low} to {high})" if low is not None and kind is not bool else text))
    return out


Txt2ImgRequest = create_model("Txt2ImgRequest", __base__=_Txt2ImgFields, __doc__=None, **_declared())


class Img2ImgRequest(Txt2ImgRequest):
    """``/sdapi/v1/img2img``: the txt2img fields plus the input image and, for inpainting, a mask."""

    init_images: list[str] = Field(default_factory=list, description="One base64 image (data: prefix allowed).")
    mask: str | None = Field(None, description="Base64 mask, white = repaint: inpainting. None: image to image.")
    denoising_strength: float = Field(0.75, description="0: the image unchanged (no U-Net step), 1: redrawn.")
    resize_mode: int | str = Field(0, description="Just Resize (0), Crop and Resize (1), Resize and Fill (2).")
    mask_blur: int = 4
    inpainting_fill: int = Field(0, description="0 fill, 1 original, 2 latent noise, 3 latent nothing.")
    inpaint_full_res: bool = Field(True, description="Only masked: work on the mask's box at width × height.")
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = Field(0, description="1: repaint what the mask leaves black.")
    include_init_images: bool = Field(False, description="Echo init_images and mask in `parameters`.")


class ControlNetUnit(_Request):
    """One unit of ``alwayson_scripts.controlnet.args`` (the sd-webui-controlnet API)."""

    enabled: bool = True
    image: Any = Field(None, description="Base64 image (data: prefix allowed), or {'image': base64}.")
    input_image: Any = Field(None, description="Older name of image.")
    module: str | None = Field("none", description="canny, depth, depth_midas, depth_anything, ... or none (the image is already a control map).")
    model: str | None = Field(None, description="A name from /controlnet/model_list.")
    weight: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    resize_mode: int | str = Field("Crop and Resize", description="Just Resize (0), Crop and Resize (1), Resize and Fill (2).")
    threshold_a: float = Field(-1, description="Canny low threshold (-1: 100).")
    threshold_b: float = Field(-1, description="Canny high threshold (-1: 200).")


class ControlNetArgs(_Request):
    args: list[ControlNetUnit] = Field(default_factory=list)


class OptionsRequest(_Request):
    model_config = ConfigDict(extra="allow")
    sd_model_checkpoint: str | None = Field(None, description="Switch the base model (a title from /sdapi/v1/sd-models).")
    CLIP_stop_at_last_layers: int | None = Field(None, description="Clip skip of API requests that do not override it (1-12).")
    sd_vae: str | None = Field(None, description="\"Automatic\", \"None\" (the model's own) or a file from /sdapi/v1/sd-vae.")


class DownloadRequest(_Request):
    source: str = Field("huggingface", description="huggingface (HF_ENDPOINT honoured) or modelscope.")
    repo: str = Field(..., description="Repository id, owner/name.")
    kind: str = Field("checkpoints", description="checkpoints, lora, vae, embeddings, controlnet or upscalers.")
    file: str | None = Field(None, description="One file of the repository; none: the whole repository as a diffusers folder.")
    sha256: str | None = Field(None, description="Checksum to verify (else the service's own).")


class ExtraSingleImageRequest(_Request):
    image: str = Field(..., description="Base64 image (data: prefix allowed).")
    resize_mode: int = Field(0, description="0: scale by upscaling_resize (Danqing supports only this).")
    upscaling_resize: float = Field(2, description="2 or 4.")
    upscaler_1: str = Field("None", description="A name from /sdapi/v1/upscalers (A1111's R-ESRGAN names map to the same files).")


class PngInfoRequest(_Request):
    image: str = Field("", description="Base64 PNG (data: prefix allowed).")


class DetectRequest(_Request):
    controlnet_module: str = "none"
    controlnet_input_images: list[str] = Field(default_factory=list)
    controlnet_processor_res: int = Field(512, description="Ignored: maps are computed at the input's own resolution.")
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1
