"""What a designer reads after a job: a short Chinese summary of the info JSON the events return
(seed first, copyable; size, sampler, steps, CFG, time; model, LoRAs, post-steps; every notice as
a sentence) and the A1111 infotext, ready to copy. The API keeps returning the JSON itself."""

from __future__ import annotations

import json

from .common import plain


def _seconds(value) -> str:
    return f"{float(value):.1f}" if isinstance(value, (int, float)) else "?"


def _final_size(info: dict, first: tuple) -> tuple:
    """The size of the picture a job ends with: after the hires pass, or the upscaled twin."""
    hires = info.get("hires")
    if isinstance(hires, dict) and hires.get("size"):
        return tuple(hires["size"])
    scale = info.get("upscale")
    if info.get("upscaler") and isinstance(scale, (int, float)) and all(isinstance(v, int) for v in first):
        return tuple(int(v * scale) for v in first)
    return first


def summarize(S, info_text: str | None) -> tuple[str, str]:
    """(Markdown summary, A1111 infotext) of an event's info JSON; ("", "") when there is none."""
    try:
        info = json.loads(info_text or "")
    except ValueError:
        return "", ""
    if not isinstance(info, dict) or not info:
        return "", ""
    if info.get("cancelled"):
        return S.summary_cancelled, ""
    if "upscaler" in info and "steps" not in info and "num_inference_steps" not in info:
        return S.summary_upscaled.format(upscaler=info["upscaler"], scale=info.get("scale", "?"),
                                         seconds=_seconds(info.get("seconds"))), info.get("infotext", "")
    seeds = info.get("all_seeds") or [info.get("seed")]
    first = (info.get("width", "?"), info.get("height", "?"))
    final = _final_size(info, first)
    lines = [S.summary_title.format(
        seed=seeds[0], width=final[0], height=final[1],
        sampler=info.get("sampler", "?"),
        steps=info.get("num_inference_steps", "?"), cfg=f"{info.get('guidance_scale', '?'):g}"
        if isinstance(info.get("guidance_scale"), (int, float)) else "?", seconds=_seconds(info.get("seconds")))]
    if len(seeds) > 1:
        lines.append(S.summary_seeds.format(seeds=S.list_sep.join(f"`{s}`" for s in seeds)))
    if info.get("model"):  # names come from files: shown as text (ui/common.plain)
        model = S.summary_model.format(model=plain(info["model"]))
        lines.append(model + S.summary_vae.format(vae=plain(info["vae"])) if info.get("vae") else model)
    expansion = (info.get("notices") or {}).get("expansion") or {}
    if expansion.get("words"):
        lines.append(S.summary_expanded.format(prompter=plain(expansion.get("prompter", "")),
                                               words=expansion["words"].replace("`", "'").replace("\n", " ")))
    translation = (info.get("notices") or {}).get("translation") or {}
    if translation.get("english_prompt") is not None:  # what the English-only encoder read
        lines.append(S.summary_translated.format(translator=plain(translation.get("translator", "")),
                                                 prompt=translation["english_prompt"].replace("`", "'").replace("\n", " ")))
    elif translation.get("untranslated"):
        lines.append(S.summary_untranslated)
    if info.get("loras"):
        lines.append(S.summary_loras.format(loras=S.list_sep.join(f"{plain(name)} ×{weight:g}" for name, weight in info["loras"])))
    if info.get("controlnet"):
        units = S.list_sep.join(f"{plain(u.get('model'))} ×{u.get('weight', 1):g}" for u in info["controlnet"])
        lines.append(S.summary_controlnets.format(units=units))
    if info.get("upscaler"):
        lines.append(S.summary_hires.format(upscaler=info["upscaler"], scale=info.get("upscale", "?"),
                                            seconds=_seconds(info.get("upscale_seconds")), width=first[0],
                                            height=first[1]))
    hires = info.get("hires")
    if isinstance(hires, dict):
        upscaler = S.hires_latent if hires.get("upscaler") == "latent" else hires.get("upscaler")
        lines.append(S.summary_hires_pass.format(upscaler=upscaler, scale=f"{hires.get('scale', 0):g}", width=first[0],
                                                 height=first[1], strength=hires.get("strength"), steps=hires.get("steps")))
    if info.get("mode") in S.summary_modes:
        lines.append(S.summary_edit.format(mode=S.summary_modes[info["mode"]], strength=info.get("denoising_strength")))
    if info.get("draft"):
        lines.append(S.summary_draft)
    notices = info.get("notices") or {}
    if notices.get("prompt_chunks"):
        lines.append(S.summary_prompt_chunks.format(chunks=notices["prompt_chunks"]))
    if notices.get("deepcache_skipped"):
        lines.append(S.summary_deepcache_skipped.format(family=notices["deepcache_skipped"]))
    if notices.get("full_strength"):
        lines.append(S.summary_full_strength.format(family=notices["full_strength"]))
    if notices.get("sampler"):
        lines.append(S.summary_flow_sampler.format(**notices["sampler"]))
    if notices.get("clip_skip"):
        lines.append(S.summary_clip_skip.format(**notices["clip_skip"]))
    if notices.get("embeddings"):
        lines.append(S.summary_embeddings.format(names=S.list_sep.join(notices["embeddings"])))
    return "\n\n".join(lines), info.get("infotext", "")
