"""训练 LoRA: a LoRA trained on a designer's own pictures, as a peft adapter on the store's
resident U-Net (and text encoder when asked): the base weights stay frozen and are never copied;
training adds only the adapter, its optimizer state and the activations.

1. Data: every picture resized (shorter side) and centre-cropped to the resolution, encoded
   once by the VAE; captions (the trigger word first) encoded once when the text encoder is
   frozen. PAI's BertTokenizer and CLIP's tokenizer both work (the model's own).
2. The adapter: ``peft`` LoRA on the attention and feed-forward projections (Kohya's default
   targets), initialised from the run's seed. Other LoRAs on the base are switched off while it
   trains and switched back afterwards.
3. Steps: the image, noise and timestep of step *n* come from a generator seeded by (seed, n),
   so a run stopped at step 15 and resumed gives the adapter of 30 uninterrupted steps. Noise
   follows the model's own scheduler (epsilon or v-prediction); min-SNR weighting optional;
   fp16/bf16 autocast with fp32 adapter weights on a GPU; gradient checkpointing optional.
4. Checkpoints: ``state.pt`` in the run's folder (adapter + optimizer + losses, read back with
   ``weights_only=True``) every 100 steps, every ``save_every`` steps and when stopped; ``<name>-step<N>.safetensors``
   beside the final ``<name>.safetensors`` in models/lora, in the Kohya/A1111 layout with ``ss_*``
   metadata, and a preview image. Existing files are never overwritten.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import ParamError
from ..formats.images import open_upload
from ..formats.lora import to_kohya
from ..requests import TrainLora
from .lora import restore_active
from .prompts import token_window

log = logging.getLogger(__name__)

ADAPTER = "danqing-train"
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
STATE = "state.pt"
STATE_EVERY = 100  # steps between two automatic checkpoints (adapter + optimizer, small)

StepHook = Callable[[int, int, float], None]  # (step done, total, loss)


@dataclass
class TrainResult:
    path: Path | None  # the finished LoRA (None when stopped before the end)
    steps_done: int
    losses: list[float]
    stopped: bool
    checkpoints: list[Path] = field(default_factory=list)
    samples: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def lora_path(lora_dir: Path, name: str, step: int | None = None) -> Path:
    return lora_dir / (f"{name}-step{step}.safetensors" if step else f"{name}.safetensors")


def _pixels(paths: tuple[str, ...], resolution: int) -> torch.Tensor:
    """(n, 3, r, r) in [-1, 1]: each picture's shorter side scaled to r, centre-cropped."""
    import numpy as np
    from PIL import Image

    rows = []
    for path in paths:
        image = open_upload(path).convert("RGB")  # size, format and decompression checks
        scale = resolution / min(image.size)
        w, h = max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))
        image = image.resize((w, h), Image.Resampling.LANCZOS)
        left, top = (w - resolution) // 2, (h - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
        rows.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
    return torch.stack(rows)


def _encode_text(base, ids: torch.Tensor) -> torch.Tensor:
    return base.text_encoder(ids.to(base.text_encoder.device))[0]


def _add_adapters(base, req: TrainLora, dtype: torch.dtype) -> list[dict]:
    """The training adapter on the U-Net (and text encoder); returns the optimizer's groups."""
    from peft import LoraConfig

    for module in (base.unet, base.text_encoder, base.vae):
        module.requires_grad_(False)
    torch.manual_seed(req.seed)
    base.unet.add_adapter(LoraConfig(r=req.rank, lora_alpha=req.alpha, init_lora_weights="gaussian",
                                     target_modules=UNET_TARGETS), adapter_name=ADAPTER)
    base.unet.set_adapters([ADAPTER])
    base.unet.enable_lora()  # the layers may carry a disable_lora() from the LoRAs switched off
    groups = [{"params": _adapter_params(base.unet), "lr": req.learning_rate}]
    if req.train_text_encoder:
        # peft's own injection (as diffusers loads text-encoder LoRAs): transformers' add_adapter
        # wants a newer peft than diffusers' LoRA loading does.
        from diffusers.utils.peft_utils import set_adapter_layers, set_weights_and_activate_adapters
        from peft import inject_adapter_in_model

        inject_adapter_in_model(LoraConfig(r=req.rank, lora_alpha=req.alpha, init_lora_weights="gaussian",
                                           target_modules=TEXT_TARGETS), base.text_encoder, adapter_name=ADAPTER)
        set_weights_and_activate_adapters(base.text_encoder, [ADAPTER], [1.0])
        set_adapter_layers(base.text_encoder, enabled=True)  # layers a disable_lora() left off
        groups.append({"params": _adapter_params(base.text_encoder), "lr": req.text_encoder_lr})
    for group in groups:
        for p in group["params"]:
            p.data = p.data.float()  # fp32 adapter weights, whatever the base's dtype
            p.requires_grad_(True)
    return groups


def _adapter_params(module) -> list[torch.nn.Parameter]:
    return [p for n, p in module.named_parameters() if f".{ADAPTER}." in n]


def _adapter_states(base, text: bool) -> dict[str, dict[str, torch.Tensor]]:
    from peft.utils import get_peft_model_state_dict

    states = {"unet": get_peft_model_state_dict(base.unet, adapter_name=ADAPTER)}
    if text:
        states["text_encoder"] = get_peft_model_state_dict(base.text_encoder, adapter_name=ADAPTER)
    return {k: {n: t.detach().float().cpu().clone() for n, t in v.items()} for k, v in states.items()}


def _remove_adapters(base) -> None:
    from diffusers.utils.peft_utils import delete_adapter_layers

    if ADAPTER in (getattr(base.unet, "peft_config", None) or {}):
        base.unet.delete_adapters([ADAPTER])
    if _adapter_params(base.text_encoder):
        delete_adapter_layers(base.text_encoder, ADAPTER)


def metadata(store, req: TrainLora, steps: int) -> dict[str, str]:
    """Kohya's ``ss_*`` fields (A1111, Civitai and Danqing's LoRA list read them)."""
    tags: Counter = Counter()
    for caption in req.captions:
        tags.update(t.strip() for t in caption.split(",") if t.strip())
    return {
        "ss_network_module": "networks.lora", "ss_network_dim": str(req.rank), "ss_network_alpha": f"{req.alpha:g}",
        "ss_output_name": req.name, "ss_steps": str(steps), "ss_max_train_steps": str(req.steps),
        "ss_resolution": f"({req.resolution}, {req.resolution})", "ss_num_train_images": str(len(req.images)),
        "ss_batch_size_per_device": str(req.batch_size), "ss_learning_rate": f"{req.learning_rate:g}",
        "ss_unet_lr": f"{req.learning_rate:g}",
        "ss_text_encoder_lr": f"{req.text_encoder_lr:g}" if req.train_text_encoder else "0",
        "ss_seed": str(req.seed), "ss_min_snr_gamma": f"{req.min_snr_gamma:g}",
        "ss_base_model_version": "sd_v1", "ss_sd_model_name": str(store.current_ref),
        "ss_sd_model_hash": store.model_hash or "", "ss_new_sd_model_hash": store.model_hash or "",
        "ss_tag_frequency": json.dumps({"danqing": dict(tags.most_common())}, ensure_ascii=False),
        "modelspec.architecture": "stable-diffusion-v1/lora", "modelspec.title": req.name,
        "modelspec.trigger_phrase": req.trigger, "ss_training_comment": "trained with Danqing",
        "ss_training_finished_at": str(int(time.time())),
    }


def _write_lora(path: Path, tensors: dict, meta: dict) -> None:
    """Write beside, then link into place: an existing file is never replaced."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    try:
        os.link(tmp, path)  # fails if the name was taken meanwhile
    except FileExistsError:
        raise ParamError("train_name_taken", name=path.stem) from None
    finally:
        tmp.unlink(missing_ok=True)


def _render(base, prompt: str, seed: int, size: int, path: Path) -> Path:
    """A sample (or the preview) with the adapter as trained so far."""
    was_training = base.unet.training
    base.unet.eval()
    base.set_progress_bar_config(disable=True)
    with torch.no_grad():
        generator = torch.Generator(device="cpu").manual_seed(seed)
        image = base(prompt, num_inference_steps=20, height=size, width=size, generator=generator).images[0]
    base.unet.train(was_training)
    image.save(path)
    return path


def _park(base, store, previous: tuple) -> None:
    """The base as generation jobs expect it: the training adapter off, the LoRAs that were in
    use back on, eval mode (a teammate's image is the same as on an idle server)."""
    base.unet.eval()
    base.text_encoder.eval()
    if _adapter_params(base.text_encoder):
        from diffusers.utils.peft_utils import set_adapter_layers

        set_adapter_layers(base.text_encoder, enabled=False)
    if previous or store.adapters.loaded:
        restore_active(store, previous)
    else:
        base.unet.disable_lora()


def _unpark(base, store, req: TrainLora) -> None:
    """The training adapter alone on again, train mode."""
    if store.adapters.loaded:
        base.disable_lora()
        store.adapters.enabled = False
    base.unet.set_adapters([ADAPTER])
    base.unet.enable_lora()
    if req.train_text_encoder:
        from diffusers.utils.peft_utils import set_adapter_layers, set_weights_and_activate_adapters

        set_weights_and_activate_adapters(base.text_encoder, [ADAPTER], [1.0])
        set_adapter_layers(base.text_encoder, enabled=True)
        base.text_encoder.train()
    base.unet.train()


def train(store, req: TrainLora, run_dir: Path, lora_dir: Path, cancel=None, on_step: StepHook | None = None,
          on_sample: Callable[[Path, int], None] | None = None, resume: bool = False,
          give_way: Callable[[], bool] | None = None) -> TrainResult:
    """Train ``req`` on the store's base. Runs inside a job (the GPU lock is held). ``cancel``
    (an Event) stops after the current step, saving a checkpoint; ``resume`` continues from the
    run folder's ``state.pt``. ``give_way()`` is asked between steps: when it says others wait,
    the base is parked as generation expects it and ``give_way(True)`` lets them run."""
    from diffusers import DDPMScheduler

    started = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    final = lora_path(lora_dir, req.name)
    if final.exists():
        raise ParamError("train_name_taken", name=req.name)
    state_file = run_dir / STATE
    saved = torch.load(state_file, map_location="cpu", weights_only=True) if resume and state_file.exists() else None
    if not resume:
        state_file.unlink(missing_ok=True)  # a new run starts from nothing
    base = store.base()
    device, dtype = store.plan.device, store.plan.dtype

    # 1. Data: latents and (frozen encoder) text embeddings, once.
    pixels = _pixels(req.images, req.resolution)
    with torch.no_grad():
        latents = torch.cat([base.vae.encode(pixels[i:i + 1].to(device, base.vae.dtype)).latent_dist.mode()
                             for i in range(len(pixels))]).float() * base.vae.config.scaling_factor
    window = token_window(base)
    ids = base.tokenizer(list(req.captions), padding="max_length", max_length=window, truncation=True,
                         return_tensors="pt").input_ids
    if not req.train_text_encoder:
        with torch.no_grad():
            embeds = _encode_text(base, ids).float()
    noise_scheduler = DDPMScheduler.from_config(base.scheduler.config)
    prediction = noise_scheduler.config.prediction_type
    alphas = noise_scheduler.alphas_cumprod.to(device)

    # 2. The adapter, the others switched off meanwhile.
    previous = store.adapters.active
    if store.adapters.loaded:
        base.disable_lora()
        store.adapters.enabled = False
    groups = _add_adapters(base, req, dtype)
    try:
        optimizer = torch.optim.AdamW(groups)
        losses: list[float] = []
        start = 0
        if saved is not None:
            from peft.utils import set_peft_model_state_dict

            set_peft_model_state_dict(base.unet, saved["unet"], adapter_name=ADAPTER)
            if req.train_text_encoder and "text_encoder" in saved:
                set_peft_model_state_dict(base.text_encoder, saved["text_encoder"], adapter_name=ADAPTER)
            optimizer.load_state_dict(saved["optimizer"])
            start, losses = int(saved["step"]), [float(x) for x in saved["losses"]]
        if req.gradient_checkpointing:
            base.unet.enable_gradient_checkpointing()
        base.unet.train()
        if req.train_text_encoder:
            base.text_encoder.train()
        autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else _null()

        def checkpoint(step: int) -> None:
            payload = {"step": step, "losses": torch.tensor(losses), "optimizer": optimizer.state_dict(),
                       **_adapter_states(base, req.train_text_encoder)}
            tmp = run_dir / f".{STATE}.tmp"
            torch.save(payload, tmp)
            os.replace(tmp, state_file)

        result = TrainResult(None, start, losses, stopped=False)
        # 3. Steps: everything random at step n comes from (seed, n).
        for step in range(start, req.steps):
            if give_way is not None and step > start and give_way():
                _park(base, store, previous)
                give_way(True)  # a teammate's picture waits at most one training step
                _unpark(base, store, req)
            if cancel is not None and cancel.is_set():
                checkpoint(step)
                result.stopped = True
                break
            generator = torch.Generator().manual_seed(req.seed * 1_000_003 + step)
            index = torch.randint(len(latents), (req.batch_size,), generator=generator)
            x0 = latents[index].to(device)
            noise = torch.randn(x0.shape, generator=generator).to(device)
            t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (req.batch_size,), generator=generator).to(device)
            noisy = noise_scheduler.add_noise(x0, noise, t)
            target = noise if prediction == "epsilon" else noise_scheduler.get_velocity(x0, noise, t)
            with autocast:
                cond = embeds[index].to(device) if not req.train_text_encoder else _encode_text(base, ids[index])
                pred = base.unet(noisy.to(dtype), t, encoder_hidden_states=cond.to(dtype)).sample
            per_sample = torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
            if req.min_snr_gamma > 0:
                snr = alphas[t] / (1 - alphas[t])
                weight = torch.clamp(snr, max=req.min_snr_gamma) / (snr + 1 if prediction == "v_prediction" else snr)
                per_sample = per_sample * weight
            loss = per_sample.mean()
            if not math.isfinite(loss.item()):
                raise ParamError("train_diverged", step=step + 1)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.item()))
            done = step + 1
            result.steps_done = done
            if on_step is not None:
                on_step(done, req.steps, losses[-1])
            if done % STATE_EVERY == 0 and done < req.steps:
                checkpoint(done)  # a crash loses at most this many steps (继续训练 resumes here)
            if req.save_every and done % req.save_every == 0 and done < req.steps:
                checkpoint(done)
                path = lora_path(lora_dir, req.name, done)
                _write_lora(path, to_kohya(_adapter_states(base, req.train_text_encoder), req.alpha),
                            metadata(store, req, done))
                result.checkpoints.append(path)
            if req.sample_every and done % req.sample_every == 0 and done < req.steps:
                sample = _render(base, req.sample_prompt or req.trigger or req.captions[0], req.seed,
                                 req.resolution, run_dir / f"sample-{done:06d}.png")
                result.samples.append(sample)
                if on_sample is not None:
                    on_sample(sample, done)
        # 4. The finished LoRA, in the Kohya layout, and its preview.
        if not result.stopped:
            checkpoint(req.steps)
            _write_lora(final, to_kohya(_adapter_states(base, req.train_text_encoder), req.alpha),
                        metadata(store, req, req.steps))
            result.path = final
            if req.preview:
                try:
                    _render(base, req.sample_prompt or req.trigger or req.captions[0], req.seed, req.resolution,
                            final.with_suffix(".png"))
                except Exception:  # a preview is a nicety: the LoRA is saved
                    log.exception("could not render the preview of %s", final.name)
        result.seconds = time.perf_counter() - started
        log.info("LoRA %s: %d/%d steps in %.1fs, loss %.4f → %.4f%s", req.name, result.steps_done, req.steps,
                 result.seconds, losses[0] if losses else float("nan"), losses[-1] if losses else float("nan"),
                 " (stopped)" if result.stopped else "")
        return result
    finally:
        # 5. The base as it was: adapter gone, eval mode, the other LoRAs back as they were.
        if req.gradient_checkpointing:
            base.unet.disable_gradient_checkpointing()
        base.unet.eval()
        base.text_encoder.eval()
        _remove_adapters(base)
        restore_active(store, previous)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
