"""What happens to a generation request before its task runs, wherever the task runs — in this
process, or on a Ray Serve replica, which holds the loaded model and so knows what its
encoders read: 提示词扩写 (expand.py), Chinese put into English for an English-only encoder
(translate.py), a flow-matching model's own sampler, and clip skip only for CLIP encoders.

``prepare`` returns the effective request (what the task runs and the PNG's parameters say)
and the notices that tell the designer what was changed."""

from __future__ import annotations

from dataclasses import replace

from ..formats.families import FLOW_SAMPLERS, reads_chinese
from ..requests import Txt2Img
from . import expand, translate


def base_of(request) -> Txt2Img:
    """The Txt2Img inside any generation request (its prompt, size, seed...)."""
    if isinstance(request, Txt2Img):
        return request
    return request.base if hasattr(request, "base") else request.edit.base


def with_base(request, base: Txt2Img):
    """``request`` with ``base`` in place of its Txt2Img."""
    if isinstance(request, Txt2Img):
        return base
    if hasattr(request, "base"):
        return replace(request, base=base)
    return replace(request, edit=replace(request.edit, base=base))


def prompt_language(store) -> str:
    """The language 提示词扩写 writes in: the one the loaded model's encoder reads."""
    return "zh" if reads_chinese(store.base()) else "en"


def _expanded(store, request):
    base = base_of(request)
    if not base.expand:
        return request, None
    prompt, prompter = expand.expand_prompt(store, base.prompt, base.seed, prompt_language(store))
    notice = {"prompter": prompter, "typed": base.prompt, "prompt": prompt,
              "words": prompt[len(base.prompt.rstrip(" ," + expand.COMMA_ZH)) + 1:].strip(" ,")}
    return with_base(request, replace(base, prompt=prompt)), notice


def _flow_sampler(family, request):
    """A flow-matching model (Z-Image) samples with its own Euler: another sampler name is
    replaced (and said in the notices, and written as "Euler" in the PNG's parameters)."""
    base = base_of(request)
    if not family.flow or base.sampler in FLOW_SAMPLERS:
        return request, None
    used = replace(base, sampler=FLOW_SAMPLERS[0], schedule_type="Automatic")
    return with_base(request, used), {"asked": base.sampler, "used": FLOW_SAMPLERS[0], "family": family.label}


def _clip_skip(family, request):
    """Kolors' ChatGLM3 and Z-Image's Qwen3 are not CLIP: a clip skip asked of them (from the API,
    or parameters sent from a PNG) is not used, said in the notices and left out of the PNG."""
    base = base_of(request)
    if not family.extra.get("plain_prompts") or base.clip_skip <= 1:
        return request, None
    return with_base(request, replace(base, clip_skip=1)), {"asked": base.clip_skip, "family": family.label}


def prepare(store, request, user: str = "", edits: dict[str, str] | None = None):
    """(the effective request, notices) for ``request`` on ``store``'s loaded model.
    ``user``: whose edited translations apply (translate.remember_edit); ``edits``: those
    edits themselves ({Chinese prompt: English}), where they were made in another process."""
    notices = {}
    request, notices["expansion"] = _expanded(store, request)  # first: in the language the model reads
    request, notices["translation"] = translate.translate_request(store, request, base_of, with_base, user, edits)
    request, notices["sampler"] = _flow_sampler(store.family, request)
    request, notices["clip_skip"] = _clip_skip(store.family, request)
    return request, {name: notice for name, notice in notices.items() if notice is not None}
