"""训练 LoRA: a LoRA trained on a designer's own pictures, as a peft adapter on the store's
resident U-Net (and text encoder when asked): the base weights stay frozen and are never copied;
training adds only the adapter, its optimizer state and the activations.

1. Data: every picture put in its aspect-ratio bucket (Kohya's: about resolution² pixels, sides
   multiples of 64; or the square when buckets are off), scaled to cover it and centre-cropped,
   encoded once by the VAE; captions (the trigger word first) encoded once when the text encoders
   are frozen. PAI's BertTokenizer and CLIP's tokenizer both work (the model's own). SDXL (its
   family, formats/families.py): both encoders' penultimate states side by side and the pooled
   embedding, with the size conditioning of each picture's bucket, as its U-Net was trained.
2. The adapter: ``peft`` LoRA on the attention and feed-forward projections (Kohya's default
   targets), initialised from the run's seed. Other LoRAs on the base are switched off while it
   trains and switched back afterwards.
3. Steps: epochs of batches, each from one bucket (pictures × repeats shuffled per epoch by
   (seed, epoch)); the noise and timestep of step *n* come from a generator seeded by (seed, n),
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
from .translate import translate_captions

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
    total_steps: int = 0  # the run's length (steps, or epochs × batches per epoch)
    buckets: list[tuple[tuple[int, int], int]] = field(default_factory=list)  # ((w, h), pictures)
    paused: bool = False  # checkpointed to let another user's training take its turn (resumes exactly)
    translator: str | None = None  # the translator that put Chinese captions into English (translate.py)


def lora_path(lora_dir: Path, name: str, step: int | None = None) -> Path:
    return lora_dir / (f"{name}-step{step}.safetensors" if step else f"{name}.safetensors")


def bucket_sizes(resolution: int) -> list[tuple[int, int]]:
    """Kohya's aspect-ratio buckets for ``resolution``: (width, height) pairs of at most
    resolution² pixels, sides multiples of 64 (16 below 256) between half and twice it."""
    step = 64 if resolution >= 256 else 16
    area, low = resolution * resolution, max(step, resolution // 2 // step * step)
    high = resolution * 2 // step * step
    sizes = set()
    for w in range(low, high + 1, step):
        h = min(high, area // w // step * step)
        if h >= low:
            sizes.update({(w, h), (h, w)})
    return sorted(sizes)


def _bucket_of(size: tuple[int, int], sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose shape is nearest the picture's (then the larger one)."""
    aspect = math.log(size[0] / size[1])
    return min(sizes, key=lambda b: (abs(math.log(b[0] / b[1]) - aspect), -b[0] * b[1]))


def _pixels(path: str, size: tuple[int, int]) -> torch.Tensor:
    """(3, h, w) in [-1, 1]: the picture scaled to cover ``size`` (w, h), centre-cropped."""
    import numpy as np
    from PIL import Image

    image = open_upload(path).convert("RGB")  # size, format and decompression checks
    w, h = size
    scale = max(w / image.width, h / image.height)
    sw, sh = max(w, round(image.width * scale)), max(h, round(image.height * scale))
    image = image.resize((sw, sh), Image.Resampling.LANCZOS)
    left, top = (sw - w) // 2, (sh - h) // 2
    image = image.crop((left, top, left + w, top + h))
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


def assign_buckets(paths: tuple[str, ...], resolution: int, buckets: bool) -> list[tuple[int, int]]:
    """Each picture's training size (w, h): its aspect-ratio bucket, or the square."""
    if not buckets:
        return [(resolution, resolution)] * len(paths)
    sizes = bucket_sizes(resolution)
    return [_bucket_of(open_upload(p).size, sizes) for p in paths]


def epoch_batches(shapes: list[tuple[int, int]], repeats: int, batch_size: int, seed: int,
                  epoch: int) -> list[list[int]]:
    """Epoch ``epoch``'s batches of picture indices: each bucket's pictures (× repeats) shuffled
    and cut into batches (the last may be smaller), the batches shuffled. Seeded by (seed,
    epoch), and always as many batches, so step n is the same batch in a resumed run."""
    generator = torch.Generator().manual_seed(seed * 7_919 + epoch)
    groups: dict[tuple[int, int], list[int]] = {}
    for index, shape in enumerate(shapes):
        groups.setdefault(shape, []).append(index)
    batches = []
    for shape in sorted(groups):
        items = groups[shape] * repeats
        items = [items[i] for i in torch.randperm(len(items), generator=generator).tolist()]
        batches += [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def bucket_summary(shapes: list[tuple[int, int]]) -> list[tuple[tuple[int, int], int]]:
    """((w, h), pictures) per bucket, the fullest first."""
    return Counter(shapes).most_common()


def _encoders(base) -> list[tuple[str, object, object]]:
    """(name, tokenizer, text encoder) of the base: one, or SDXL's two."""
    rows = [("text_encoder", base.tokenizer, base.text_encoder)]
    if getattr(base, "text_encoder_2", None) is not None:
        rows.append(("text_encoder_2", base.tokenizer_2, base.text_encoder_2))
    return rows


def _tokenize(base, captions: list[str]) -> list[torch.Tensor]:
    """Each tokenizer's ids for the captions (SDXL's two pad differently)."""
    window = token_window(base)
    return [tok(captions, padding="max_length", max_length=window, truncation=True, return_tensors="pt").input_ids
            for _, tok, _ in _encoders(base)]


def _encode_text(base, ids: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden states, pooled embedding or None), as the pipeline encodes prompts: the last
    layer (SD 1.x) or both SDXL encoders' penultimate layers side by side and OpenCLIP-G's
    projected pooled embedding (diffusers' encode_prompt)."""
    encoders = _encoders(base)
    if len(encoders) == 1:
        encoder = encoders[0][2]
        return encoder(ids[0].to(encoder.device))[0], None
    states, pooled = [], None
    for (_, _, encoder), tokens in zip(encoders, ids):
        out = encoder(tokens.to(encoder.device), output_hidden_states=True)
        states.append(out.hidden_states[-2])
        pooled = out[0]
    return torch.cat(states, dim=-1), pooled


def _time_ids(shape: tuple[int, int], count: int) -> torch.Tensor:
    """SDXL's size conditioning for a bucket (w, h): original = target = the bucket, no crop."""
    w, h = shape
    return torch.tensor([[h, w, 0, 0, h, w]] * count, dtype=torch.float32)


def _add_adapters(base, req: TrainLora, dtype: torch.dtype) -> list[dict]:
    """The training adapter on the U-Net (and text encoder); returns the optimizer's groups."""
    from peft import LoraConfig

    for module in (base.unet, base.vae, *(e for _, _, e in _encoders(base))):
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

        for _, _, encoder in _encoders(base):
            inject_adapter_in_model(LoraConfig(r=req.rank, lora_alpha=req.alpha, init_lora_weights="gaussian",
                                               target_modules=TEXT_TARGETS), encoder, adapter_name=ADAPTER)
            set_weights_and_activate_adapters(encoder, [ADAPTER], [1.0])
            set_adapter_layers(encoder, enabled=True)  # layers a disable_lora() left off
            groups.append({"params": _adapter_params(encoder), "lr": req.text_encoder_lr})
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
        for name, _, encoder in _encoders(base):
            states[name] = get_peft_model_state_dict(encoder, adapter_name=ADAPTER)
    return {k: {n: t.detach().float().cpu().clone() for n, t in v.items()} for k, v in states.items()}


def _remove_adapters(base) -> None:
    from diffusers.utils.peft_utils import delete_adapter_layers

    if ADAPTER in (getattr(base.unet, "peft_config", None) or {}):
        base.unet.delete_adapters([ADAPTER])
    for _, _, encoder in _encoders(base):
        if _adapter_params(encoder):
            delete_adapter_layers(encoder, ADAPTER)


def metadata(store, req: TrainLora, steps: int, total: int, shapes: list[tuple[int, int]]) -> dict[str, str]:
    """Kohya's ``ss_*`` fields (A1111, Civitai and Danqing's LoRA list read them)."""
    tags: Counter = Counter()
    for caption in req.captions:
        tags.update(t.strip() for t in caption.split(",") if t.strip())
    sdxl = store.family.name == "sdxl"
    buckets = {str(i): {"resolution": list(size), "count": n * req.repeats}
               for i, (size, n) in enumerate(sorted(Counter(shapes).items()))}
    return {
        "ss_network_module": "networks.lora", "ss_network_dim": str(req.rank), "ss_network_alpha": f"{req.alpha:g}",
        "ss_output_name": req.name, "ss_steps": str(steps), "ss_max_train_steps": str(total),
        "ss_num_epochs": str(req.epochs) if req.epochs else "",
        "ss_dataset_dirs": json.dumps({"danqing": {"n_repeats": req.repeats, "img_count": len(req.images)}}),
        "ss_enable_bucket": str(req.buckets), "ss_bucket_no_upscale": "False",
        "ss_bucket_info": json.dumps({"buckets": buckets, "mean_img_ar_error": 0.0}) if req.buckets else "null",
        "ss_resolution": f"({req.resolution}, {req.resolution})", "ss_num_train_images": str(len(req.images) * req.repeats),
        "ss_batch_size_per_device": str(req.batch_size), "ss_learning_rate": f"{req.learning_rate:g}",
        "ss_unet_lr": f"{req.learning_rate:g}",
        "ss_text_encoder_lr": f"{req.text_encoder_lr:g}" if req.train_text_encoder else "0",
        "ss_seed": str(req.seed), "ss_min_snr_gamma": f"{req.min_snr_gamma:g}",
        "ss_base_model_version": "sdxl_base_v1-0" if sdxl else "sd_v1", "ss_sd_model_name": str(store.current_ref),
        "ss_sd_model_hash": store.model_hash or "", "ss_new_sd_model_hash": store.model_hash or "",
        "ss_tag_frequency": json.dumps({"danqing": dict(tags.most_common())}, ensure_ascii=False),
        "modelspec.architecture": "stable-diffusion-xl-v1-base/lora" if sdxl else "stable-diffusion-v1/lora",
        "modelspec.title": req.name,
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
    from diffusers.utils.peft_utils import set_adapter_layers

    base.unet.eval()
    for _, _, encoder in _encoders(base):
        encoder.eval()
        if _adapter_params(encoder):
            set_adapter_layers(encoder, enabled=False)
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

        for _, _, encoder in _encoders(base):
            set_weights_and_activate_adapters(encoder, [ADAPTER], [1.0])
            set_adapter_layers(encoder, enabled=True)
            encoder.train()
    base.unet.train()


def train(store, req: TrainLora, run_dir: Path, lora_dir: Path, cancel=None, on_step: StepHook | None = None,
          on_sample: Callable[[Path, int], None] | None = None, resume: bool = False,
          give_way: Callable[[], bool] | None = None, pause: Callable[[int], bool] | None = None,
          max_steps: int = 0) -> TrainResult:
    """Train ``req`` on the store's base. Runs inside a job (the GPU lock is held). ``cancel``
    (an Event) stops after the current step, saving a checkpoint; ``resume`` continues from the
    run folder's ``state.pt``. ``give_way()`` is asked between steps: when it says others wait,
    the base is parked as generation expects it and ``give_way(True)`` lets them run.
    ``pause(steps_this_time)`` is asked too: True checkpoints and returns ``paused`` (another
    user's training takes its turn; a resume continues exactly). ``max_steps``: the operator's
    cap on one run's steps (0: none)."""
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
    if store.family.extra.get("plain_prompts"):  # Kolors: ChatGLM's encoding is not trained here yet
        raise ParamError("train_family_unsupported", family=store.family.label)
    req, translator = translate_captions(store, req)  # Chinese captions for an English-only encoder

    # 1. Data: each picture in its bucket's shape, encoded once by the VAE; (frozen encoder)
    #    text embeddings once.
    shapes = assign_buckets(req.images, req.resolution, req.buckets)
    latents = []
    with torch.no_grad():
        for path, shape in zip(req.images, shapes):
            pixels = _pixels(path, shape)[None].to(device, base.vae.dtype)
            latents.append(base.vae.encode(pixels).latent_dist.mode()[0].float().cpu()
                           * base.vae.config.scaling_factor)
    per_epoch = len(epoch_batches(shapes, req.repeats, req.batch_size, req.seed, 0))
    total = req.total_steps(per_epoch)
    if max_steps and total > max_steps:
        raise ParamError("train_over_cap", steps=total, limit=max_steps)
    log.info("LoRA %s: %d pictures in %s, %d steps (%d per epoch)", req.name, len(shapes),
             ", ".join(f"{w}x{h}:{n}" for (w, h), n in bucket_summary(shapes)), total, per_epoch)
    ids = _tokenize(base, list(req.captions))
    sdxl = store.family.pooled
    if not req.train_text_encoder:
        with torch.no_grad():
            embeds, pooled = _encode_text(base, ids)
            embeds, pooled = embeds.float(), (pooled.float() if pooled is not None else None)
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
            for name, _, encoder in _encoders(base):
                if req.train_text_encoder and name in saved:
                    set_peft_model_state_dict(encoder, saved[name], adapter_name=ADAPTER)
            optimizer.load_state_dict(saved["optimizer"])
            start, losses = int(saved["step"]), [float(x) for x in saved["losses"]]
        if req.gradient_checkpointing:
            base.unet.enable_gradient_checkpointing()
        base.unet.train()
        if req.train_text_encoder:
            for _, _, encoder in _encoders(base):
                encoder.train()
        autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else _null()

        def checkpoint(step: int) -> None:
            payload = {"step": step, "losses": torch.tensor(losses), "optimizer": optimizer.state_dict(),
                       **_adapter_states(base, req.train_text_encoder)}
            tmp = run_dir / f".{STATE}.tmp"
            torch.save(payload, tmp)
            os.replace(tmp, state_file)

        result = TrainResult(None, start, losses, stopped=False, total_steps=total, buckets=bucket_summary(shapes),
                             translator=translator)
        batches: dict[int, list[list[int]]] = {}
        # 3. Steps: step n takes batch n of its epoch; its noise and timesteps come from (seed, n).
        for step in range(start, total):
            if give_way is not None and step > start and give_way():
                _park(base, store, previous)
                give_way(True)  # a teammate's picture waits at most one training step
                _unpark(base, store, req)
            if cancel is not None and cancel.is_set():
                checkpoint(step)
                result.stopped = True
                break
            if pause is not None and step > start and pause(step - start):
                checkpoint(step)
                result.paused = True
                break
            epoch, position = divmod(step, per_epoch)
            if epoch not in batches:
                batches = {epoch: epoch_batches(shapes, req.repeats, req.batch_size, req.seed, epoch)}
            index = torch.tensor(batches[epoch][position])
            generator = torch.Generator().manual_seed(req.seed * 1_000_003 + step)
            x0 = torch.stack([latents[i] for i in index.tolist()]).to(device)
            noise = torch.randn(x0.shape, generator=generator).to(device)
            t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(index),), generator=generator).to(device)
            noisy = noise_scheduler.add_noise(x0, noise, t)
            target = noise if prediction == "epsilon" else noise_scheduler.get_velocity(x0, noise, t)
            with autocast:
                if req.train_text_encoder:
                    cond, pooled_now = _encode_text(base, [tokens[index] for tokens in ids])
                else:
                    cond, pooled_now = embeds[index].to(device), (pooled[index].to(device) if sdxl else None)
                extra = {}
                if sdxl:  # the pooled embedding and the bucket's size, as SDXL's U-Net takes them
                    extra = {"added_cond_kwargs": {"text_embeds": pooled_now.to(dtype),
                                                   "time_ids": _time_ids(shapes[int(index[0])], len(index)).to(device, dtype)}}
                pred = base.unet(noisy.to(dtype), t, encoder_hidden_states=cond.to(dtype), **extra).sample
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
                on_step(done, total, losses[-1])
            if done % STATE_EVERY == 0 and done < total:
                checkpoint(done)  # a crash loses at most this many steps (继续训练 resumes here)
            if req.save_every and done % req.save_every == 0 and done < total:
                checkpoint(done)
                path = lora_path(lora_dir, req.name, done)
                _write_lora(path, to_kohya(_adapter_states(base, req.train_text_encoder), req.alpha, sdxl),
                            metadata(store, req, done, total, shapes))
                result.checkpoints.append(path)
            if req.sample_every and done % req.sample_every == 0 and done < total:
                sample = _render(base, req.sample_prompt or req.trigger or req.captions[0], req.seed,
                                 req.resolution, run_dir / f"sample-{done:06d}.png")
                result.samples.append(sample)
                if on_sample is not None:
                    on_sample(sample, done)
        # 4. The finished LoRA, in the Kohya layout, and its preview.
        if not result.stopped and not result.paused:
            checkpoint(total)
            _write_lora(final, to_kohya(_adapter_states(base, req.train_text_encoder), req.alpha, sdxl),
                        metadata(store, req, total, total, shapes))
            result.path = final
            if req.preview:
                try:
                    _render(base, req.sample_prompt or req.trigger or req.captions[0], req.seed, req.resolution,
                            final.with_suffix(".png"))
                except Exception:  # a preview is a nicety: the LoRA is saved
                    log.exception("could not render the preview of %s", final.name)
        result.seconds = time.perf_counter() - started
        log.info("LoRA %s: %d/%d steps in %.1fs, loss %.4f → %.4f%s", req.name, result.steps_done, total,
                 result.seconds, losses[0] if losses else float("nan"), losses[-1] if losses else float("nan"),
                 " (stopped)" if result.stopped else " (paused for another run)" if result.paused else "")
        return result
    finally:
        # 5. The base as it was: adapter gone, eval mode, the other LoRAs back as they were.
        if req.gradient_checkpointing:
            base.unet.disable_gradient_checkpointing()
        base.unet.eval()
        for _, _, encoder in _encoders(base):
            encoder.eval()
        _remove_adapters(base)
        restore_active(store, previous)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
