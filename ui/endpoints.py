"""The Gradio API's published positional order of every endpoint, frozen.

A client that calls ``/txt2img`` or ``/canny`` with positional arguments relies on this order, so
it only ever grows at its end: each endpoint takes its published names in this order, then any
parameter added since (a ``requests.param`` field of Txt2Img) after them. tests/test_endpoints.py
checks every endpoint of the built UI against this table: a rename, a reordering or a new
endpoint missing here fails there. (Generated from the published API description on 2026-12-05;
edit only by adding an endpoint.)
"""

from __future__ import annotations

from pipelines.requests import Txt2Img, declared_fields

PUBLISHED: dict[str, tuple[str, ...]] = {
    "canny": (
        "image", "prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "width", "height",
        "seed", "num_images_per_prompt", "sampler", "loras", "hires_upscaler", "hires_scale", "deepcache",
        "image_is_control_map", "controlnet_model", "controlnet_conditioning_scale", "control_guidance_start",
        "control_guidance_end", "low_threshold", "high_threshold", "resize_mode", "add_depth", "depth_image",
        "depth_image_is_control_map", "depth_controlnet_model", "depth_conditioning_scale",
        "depth_guidance_start", "depth_guidance_end", "depth_estimator", "hires_pass", "hires_strength",
        "hires_steps", "clip_skip", "schedule_type", "eta",
    ),
    "canny_preview": (
        "image", "low_threshold", "high_threshold",
    ),
    "depth": (
        "image", "prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "width", "height",
        "seed", "num_images_per_prompt", "sampler", "loras", "hires_upscaler", "hires_scale", "deepcache",
        "image_is_control_map", "controlnet_model", "controlnet_conditioning_scale", "control_guidance_start",
        "control_guidance_end", "depth_estimator", "resize_mode", "add_canny", "canny_image",
        "canny_image_is_control_map", "canny_controlnet_model", "canny_conditioning_scale",
        "canny_guidance_start", "canny_guidance_end", "low_threshold", "high_threshold", "hires_pass",
        "hires_strength", "hires_steps", "clip_skip", "schedule_type", "eta",
    ),
    "depth_preview": (
        "image", "estimator",
    ),
    "download_cancel": (
        "job_id",
    ),
    "download_files": (
        "source", "repo",
    ),
    "download_start": (
        "source", "repo", "file", "kind", "sha256",
    ),
    "img2img": (
        "image", "prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "width", "height",
        "seed", "num_images_per_prompt", "sampler", "loras", "deepcache", "denoising_strength", "resize_mode",
        "save_inputs", "add_canny", "canny_image", "canny_image_is_control_map", "canny_controlnet_model",
        "canny_conditioning_scale", "canny_guidance_start", "canny_guidance_end", "low_threshold",
        "high_threshold", "add_depth", "depth_image", "depth_image_is_control_map", "depth_controlnet_model",
        "depth_conditioning_scale", "depth_guidance_start", "depth_guidance_end", "depth_estimator",
        "clip_skip", "schedule_type", "eta",
    ),
    "inpaint": (
        "image", "mask", "prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "width",
        "height", "seed", "num_images_per_prompt", "sampler", "loras", "deepcache", "denoising_strength",
        "mask_blur", "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding",
        "inpainting_mask_invert", "save_inputs", "clip_skip", "schedule_type", "eta",
    ),
    "outpaint": (
        "image", "prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "width", "height",
        "seed", "num_images_per_prompt", "sampler", "loras", "deepcache", "denoising_strength", "left",
        "right", "up", "down", "inpainting_fill", "save_inputs", "clip_skip", "schedule_type", "eta",
    ),
    "png_info": (
        "image",
    ),
    "stop": (),
    "switch_model": (
        "ref",
    ),
    "switch_vae": (
        "choice",
    ),
    "system_info": (),
    "train": (
        "name", "trigger", "captions", "preset", "steps", "epochs", "repeats", "buckets", "rank", "alpha",
        "learning_rate", "text_encoder_lr", "train_text_encoder", "resolution", "batch_size", "seed",
        "save_every", "sample_every", "sample_prompt", "min_snr_gamma", "gradient_checkpointing",
    ),
    "train_caption": (
        "name_value", "rows", "captioner_name", "replace",
    ),
    "train_read": (
        "name_value", "uploaded",
    ),
    "train_resume": (
        "name", "trigger", "captions", "preset", "steps", "epochs", "repeats", "buckets", "rank", "alpha",
        "learning_rate", "text_encoder_lr", "train_text_encoder", "resolution", "batch_size", "seed",
        "save_every", "sample_every", "sample_prompt", "min_snr_gamma", "gradient_checkpointing",
    ),
    "train_stop": (),
    "txt2img": (
        "prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "width", "height", "seed",
        "num_images_per_prompt", "sampler", "loras", "hires_upscaler", "hires_scale", "deepcache", "draft",
        "hires_pass", "hires_strength", "hires_steps", "clip_skip", "schedule_type", "eta",
    ),
    "upscale": (
        "image", "upscaler", "scale",
    ),
    "xy_grid": (
        "prompt", "negative", "sampler", "seed", "steps", "cfg", "width", "height", "lora", "lora_weight",
        "x_axis", "x_values", "y_axis", "y_values",
    ),
}
# The endpoints built from a generation request: what they take beyond the published names.
TAKES_TXT2IMG = ("txt2img", "canny", "depth", "img2img", "inpaint", "outpaint")


def names(endpoint: str) -> tuple[str, ...]:
    """``endpoint``'s parameters: the published ones in their order, then those added since."""
    published = PUBLISHED[endpoint]
    added = tuple(f.name for f in declared_fields(Txt2Img) if f.name not in published) \
        if endpoint in TAKES_TXT2IMG else ()
    return published + added

