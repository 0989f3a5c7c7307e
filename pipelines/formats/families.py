"""Model families: what differs between SD 1.x/2.x, SDXL and Kolors, said in one place.

A family names its denoiser (a U-Net, or Z-Image's diffusion transformer): every part that
touches the denoiser (attention backend, speed options, 系统信息, DeepCache, inpainting-model
checks) asks ``family.denoiser`` instead of assuming ``pipe.unet``.

The store learns its base model's family once, at load (``family_of_pipeline``); a task asks it
for the pipeline class of what it does (``family.pipeline_class("img2img")``), prompt encoding
asks how many text encoders there are and which hidden layer each gives, the preview asks for
its latent→RGB map and tiny decoder, LoRA and embedding readers ask for their key layouts, the
draft and 高清修复 passes for the sizes it was trained at, 训练 LoRA for its recipe.

It lives with the formats because the file readers (single files, LoRAs, ControlNets,
embeddings) ask it too, and imports flow formats → store → tasks. A new family is one
``ModelFamily`` added to ``FAMILIES`` (and its demo model): the checklist is in
docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

# Tasks a family names a pipeline class for (the union ones only where it has union ControlNets).
TASKS = ("txt2img", "img2img", "inpaint", "controlnet", "controlnet_img2img", "controlnet_inpaint")

# The samplers of a flow-matching family (its own scheduler class, built from its config); an
# A1111 sampler name for noise-prediction schedulers is replaced by its first one.
FLOW_SAMPLERS = ("Euler",)


@dataclass(frozen=True)
class ModelFamily:
    name: str  # stable id: written into 历史, PNG info's notices and bench rows
    label: str  # what the UI shows
    classes: dict[str, str]  # task -> diffusers pipeline class name
    default_size: int  # 文生图's default width and height
    trained_sizes: tuple[tuple[int, int], ...]  # (width, height) buckets it was trained at
    latent_rgb: tuple[tuple[float, float, float], ...]  # the approximate preview's map
    tiny_decoder: str  # the name part of a tiny autoencoder folder for its latents (taesd, taesdxl)
    text_encoders: tuple[str, ...]  # the pipeline's text encoder attributes, in order
    lora_text_prefixes: dict[str, str]  # Kohya prefix -> text encoder attribute
    embedding_keys: tuple[str, ...]  # a textual-inversion file's keys, one per text encoder
    # Hidden layer of each text encoder its U-Net reads at clip skip 1 (-1: the last, through
    # the final norm; -2: the penultimate, without it).
    text_layer: int = -1
    pooled: bool = False  # the U-Net also takes the last encoder's pooled, projected embedding
    vae_fp16_safe: bool = True  # False: its VAE overflows in fp16, decode in fp32 unless fixed
    fewstep: str = "sd15"  # its rows in formats/configs/fewstep.json
    draft_side: int = 256  # the draft mode's short side, and its upscale to the final picture
    draft_upscale: int = 4
    train_resolution: int = 512
    train_text_encoder: bool = True  # 训练 LoRA trains the text encoder(s) by default
    # Its encoder reads Chinese (True/False), or None: the tokenizer says (SD 1.x: PAI and Taiyi
    # ship Chinese BERT vocabularies, SD 1.5 CLIP's English one).
    reads_chinese: bool | None = None
    denoiser: str = "unet"  # the pipeline attribute of its denoiser: "unet" or "transformer"
    latent_rgb_bias: tuple[float, float, float] = (0.0, 0.0, 0.0)
    flow: bool = False  # flow matching: its own Euler (FLOW_SAMPLERS), never the SD samplers
    latent_channels: int = 4
    extra: dict = field(default_factory=dict)

    def denoiser_of(self, pipe):
        """The pipeline's denoiser module (``pipe.unet`` or ``pipe.transformer``)."""
        return getattr(pipe, self.denoiser)

    def pipeline_class(self, task: str):
        import diffusers

        if task not in self.classes:  # a mode this family has no pipeline for
            from ..errors import ModelError

            if task.startswith("controlnet_union") and "controlnet" in self.classes:
                raise ModelError("controlnet_union_family", base=self.label)
            if task == "controlnet_img2img" and "controlnet" in self.classes:  # Z-Image: txt2img and inpaint only
                raise ModelError("controlnet_no_img2img", family=self.label)
            raise ModelError(f"family_no_{TASK_WORDS.get(task, 'mode')}", family=self.label)
        return getattr(diffusers, self.classes[task])


SD1 = ModelFamily(
    name="sd1",
    label="SD 1.x / 2.x",
    classes={
        "txt2img": "StableDiffusionPipeline",
        "img2img": "StableDiffusionImg2ImgPipeline",
        "inpaint": "StableDiffusionInpaintPipeline",
        "controlnet": "StableDiffusionControlNetPipeline",
        "controlnet_img2img": "StableDiffusionControlNetImg2ImgPipeline",
        "controlnet_inpaint": "StableDiffusionControlNetInpaintPipeline",
    },
    default_size=512,
    trained_sizes=((512, 512), (512, 768), (768, 512)),
    # A1111's "Approx cheap" map for SD 1.x latents (sd_samplers_common.py).
    latent_rgb=((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473)),
    tiny_decoder="taesd",
    text_encoders=("text_encoder",),
    lora_text_prefixes={"lora_te_": "text_encoder"},
    embedding_keys=("emb_params",),
)


SDXL = ModelFamily(
    name="sdxl",
    label="SDXL",
    classes={
        "txt2img": "StableDiffusionXLPipeline",
        "img2img": "StableDiffusionXLImg2ImgPipeline",
        "inpaint": "StableDiffusionXLInpaintPipeline",
        "controlnet": "StableDiffusionXLControlNetPipeline",
        "controlnet_img2img": "StableDiffusionXLControlNetImg2ImgPipeline",
        "controlnet_inpaint": "StableDiffusionXLControlNetInpaintPipeline",
        # xinsir's ControlNet++ union models: one ControlNet, a control type per image
        "controlnet_union": "StableDiffusionXLControlNetUnionPipeline",
        "controlnet_union_img2img": "StableDiffusionXLControlNetUnionImg2ImgPipeline",
        "controlnet_union_inpaint": "StableDiffusionXLControlNetUnionInpaintPipeline",
    },
    default_size=1024,
    # Stability's SDXL buckets (the ones A1111/Fooocus offer), about one megapixel each.
    trained_sizes=((1024, 1024), (1152, 896), (896, 1152), (1216, 832), (832, 1216), (1344, 768),
                   (768, 1344), (1536, 640), (640, 1536)),
    # ComfyUI/A1111's published SDXL latent→RGB factors.
    latent_rgb=((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362),
                (-0.3165, -0.2492, -0.2188)),
    tiny_decoder="taesdxl",
    text_encoders=("text_encoder", "text_encoder_2"),
    lora_text_prefixes={"lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2"},
    embedding_keys=("clip_l", "clip_g"),
    text_layer=-2,
    pooled=True,
    vae_fp16_safe=False,
    fewstep="sdxl",
    draft_side=512,
    draft_upscale=2,
    train_resolution=1024,
    train_text_encoder=False,
    reads_chinese=False,  # CLIP ViT-L and OpenCLIP-G: English byte-pair vocabularies
)


# Kolors is SDXL's U-Net, VAE, sizes and few-step rows with one Chinese-reading ChatGLM3 encoder.
KOLORS = replace(
    SDXL,
    name="kolors",
    label="Kolors",
    # diffusers has text-to-image and image-to-image for Kolors; the other modes say so in Chinese.
    classes={"txt2img": "KolorsPipeline", "img2img": "KolorsImg2ImgPipeline"},
    text_encoders=("text_encoder",),  # ChatGLM3-6B
    lora_text_prefixes={},  # Kolors LoRAs adapt the U-Net
    embedding_keys=(),
    reads_chinese=True,
    extra={"plain_prompts": True},  # ChatGLM reads the prompt as written: no emphasis, embeddings or clip skip
)


# Z-Image (造相, Tongyi-MAI): a 6B single-stream diffusion transformer, a Qwen3 encoder that reads
# Chinese and English and writes Chinese text into the picture, the Flux 16-channel autoencoder
# and flow matching. Turbo: 8 steps without CFG (formats/configs/fewstep.json); Base: CFG.
ZIMAGE = ModelFamily(
    name="zimage",
    label="Z-Image",
    classes={
        "txt2img": "ZImagePipeline",
        "img2img": "ZImageImg2ImgPipeline",
        "inpaint": "ZImageInpaintPipeline",
        # alibaba-pai's Z-Image ControlNet union: one model, the control type said by the map
        "controlnet": "ZImageControlNetPipeline",
        "controlnet_inpaint": "ZImageControlNetInpaintPipeline",
    },
    default_size=1024,
    trained_sizes=((1024, 1024), (1152, 896), (896, 1152), (1216, 832), (832, 1216), (1344, 768),
                   (768, 1344), (1280, 720), (720, 1280)),
    # ComfyUI's latent→RGB factors for the Flux autoencoder's (scaled, shifted) latents.
    latent_rgb=((-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433),
                (-0.0174, 0.0160, 0.0617), (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115),
                (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259), (-0.0245, 0.0250, 0.1180),
                (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
                (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499),
                (-0.1262, -0.0982, -0.0778)),
    latent_rgb_bias=(-0.0329, -0.0718, -0.0851),
    tiny_decoder="taef1",
    text_encoders=("text_encoder",),  # Qwen3-4B
    lora_text_prefixes={},
    embedding_keys=(),
    fewstep="zimage",
    draft_side=512,
    draft_upscale=2,
    train_resolution=1024,
    train_text_encoder=False,
    reads_chinese=True,
    denoiser="transformer",
    flow=True,
    latent_channels=16,
    extra={"plain_prompts": True},  # Qwen3 reads the prompt as written, quotes and all
)


FAMILIES = {f.name: f for f in (SD1, SDXL, KOLORS, ZIMAGE)}
TASK_WORDS = {"inpaint": "inpaint", "controlnet": "controlnet", "controlnet_img2img": "controlnet",
              "controlnet_inpaint": "controlnet", "controlnet_union": "controlnet",
              "controlnet_union_img2img": "controlnet", "controlnet_union_inpaint": "controlnet"}


def family_of_pipeline(pipe) -> ModelFamily:
    """The family of a loaded pipeline: Kolors and Z-Image by their class, SDXL by its two
    text encoders."""
    if type(pipe).__name__.startswith("Kolors"):
        return KOLORS
    if type(pipe).__name__.startswith("ZImage"):
        return ZIMAGE
    if getattr(pipe, "text_encoder_2", None) is not None or "XL" in type(pipe).__name__:
        return SDXL
    return SD1


def reads_chinese(pipe) -> bool:
    """Whether the loaded pipeline's text encoder reads Chinese: PAI-Diffusion's and Taiyi's
    (SD 1.x with a Chinese BERT vocabulary) do; CLIP's byte-pair vocabulary (SD 1.5, SD 2.x and
    every SDXL model) does not. Said by the encoder's tokenizer, never guessed from the prompt."""
    family = family_of_pipeline(pipe)
    if family.reads_chinese is not None:
        return family.reads_chinese
    return type(pipe.tokenizer).__name__.startswith("Bert")


def family_of_index(model_index: dict) -> ModelFamily:
    """The family of a diffusers folder from its ``model_index.json``."""
    name = str(model_index.get("_class_name", ""))
    if name.startswith("Kolors"):
        return KOLORS
    if name.startswith("ZImage"):
        return ZIMAGE
    if "text_encoder_2" in model_index or name.startswith("StableDiffusionXL"):
        return SDXL
    return SD1


def family_of_unet_config(config) -> ModelFamily:
    """From a U-Net's (or ControlNet's) config: SDXL's takes time ids and a pooled embedding."""
    return SDXL if (config.get("addition_embed_type") == "text_time") else SD1


def family_of_source(path) -> ModelFamily | None:
    """The family of a model on disk without loading it: a diffusers folder's
    ``model_index.json``, a single ``.safetensors`` file's tensor names (its header only); None
    when it cannot be told cheaply (a pickled ``.ckpt``, a hub model not yet downloaded)."""
    import json
    from pathlib import Path

    path = Path(path)
    try:
        if path.is_dir():
            return family_of_index(json.loads((path / "model_index.json").read_text(encoding="utf-8")))
        if path.suffix.lower() in (".safetensors", ".gguf"):
            from .zimage_files import header_shapes, is_zimage_transformer

            keys = list(header_shapes(path))
            if is_zimage_transformer(keys):  # ComfyUI's split Z-Image transformer
                return ZIMAGE
            return SDXL if any(k.startswith("conditioner.embedders.") for k in keys) else SD1
    except Exception:  # unreadable: the loader says why when it is picked
        return None
    return None
