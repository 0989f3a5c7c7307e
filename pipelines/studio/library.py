"""What can be used: base models (their cards, hashes, switching), VAEs, LoRAs, embeddings,
极速's few-step settings, 系统信息.

A part of the studio (pipelines/studio/__init__.py): it works on the attributes the Studio
sets up (store, outputs, jobs, ...); ui/ and api/ see it through pipelines/contracts.py."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ..errors import DanqingError
from ..formats import fewstep
from ..formats.cards import read_card
from ..formats.images import open_upload
from ..tasks import lora
from ..formats.families import FAMILIES, family_of_source
from ..tasks.prompts import token_window
from .common import VERSION


class Library:
    # -- LoRAs --------------------------------------------------------------------------------
    def loras(self) -> list[dict]:
        return lora.list_loras(self.store)

    def lora_preview(self, name: str) -> Image.Image | None:
        """The preview image stored beside a listed LoRA file (same name, .png/.jpg), if any."""
        row = next((r for r in self.loras() if r["name"] == name), None)
        if row is None or not row.get("preview"):
            return None
        try:
            return open_upload(row["preview"])
        except DanqingError:
            return None

    # -- models ---------------------------------------------------------------------------
    def model_choices(self) -> list[dict]:
        loaded = self.store.current_ref if self.store.is_loaded() else None
        rows = []
        for c in self.store.model_choices():
            family = family_of_source(c.source) if c.kind != "hub" else None
            rows.append({"ref": c.ref, "local": c.local, "kind": c.kind,
                         "hash": self.store.model_hash if c.ref == loaded else None,
                         "family": family.name if family else None})
        return rows

    def embeddings(self) -> list[dict]:
        """Textual-inversion files, usable or not (with why), for the loaded model."""
        base = self.store.base()
        width = sum(getattr(base, name).get_input_embeddings().weight.shape[1] for name in self.store.family.text_encoders)
        return [{"name": e.name, "file": e.file, "vectors": 0 if e.vectors is None else int(e.vectors.shape[0]),
                 "width": e.width, "model_width": int(width), "problem": e.problem}
                for e in self.store.embeddings()]

    def model_card(self, ref: str | None = None) -> dict:
        """What A1111/Civitai helpers left beside a local model (``x.json``, ``x.civitai.info``,
        ``x.preview.png`` / ``x.png``): title, description, trigger words, base model, preview."""
        ref = ref or self.current_model()
        try:
            choice = self.store.choice(ref)
        except DanqingError:
            return {}
        if choice.kind not in ("file", "folder"):
            return {}
        card = read_card(Path(choice.source))
        stem = ref[: -len(Path(ref).suffix)] if choice.kind == "file" else ref
        for ending in (".preview.png", ".png", ".jpg", ".jpeg", ".webp"):
            try:
                card["preview"] = str(self.store.folders.resolve("checkpoints", stem + ending))
                break
            except DanqingError:
                continue
        return card

    def fast_settings(self) -> dict | None:
        """极速: what to use for few-step generation — the base model itself when it is a
        few-step one, else the surest few-step LoRA in models/lora (LCM before TCD before
        Hyper-SD; metadata before layout before file name). {"lora": file or None, "model": the
        base's name, "fewstep": the method and its published settings}; None when there is none."""
        model = self.current_model()
        unet_config = None
        try:  # a Ray front never loads the model: its name and card tell there
            unet_config = dict(self.store.denoiser().config) if self.remote is None else None
        except Exception:  # not loadable now: its name and card still tell
            pass
        found = fewstep.recognise_base(model, unet_config, self.model_card(model))
        if found is not None:
            return {"lora": None, "model": model, "fewstep": found.as_dict()}
        width = (unet_config or {}).get("cross_attention_dim")
        ranked = sorted((row for row in self.loras() if row.get("fewstep")
                         and (width is None or row.get("context_width") in (None, width))),  # this family's
                        key=lambda row: (fewstep.RANK.index(row["fewstep"]["evidence"]),
                                         list(fewstep.METHODS).index(row["fewstep"]["method"]), row["name"]))
        if not ranked:
            return None
        return {"lora": ranked[0]["name"], "model": model, "fewstep": ranked[0]["fewstep"]}

    def family(self) -> dict:
        """The loaded base model's family ({"name", "label", "default_size", "clip_skip": whether
        its encoders take a clip skip}, or None before a model is loaded) and every family's
        default size, by name."""
        loaded = self.store.loaded_family
        return {"loaded": ({"name": loaded.name, "label": loaded.label, "default_size": loaded.default_size,
                            "clip_skip": not loaded.extra.get("plain_prompts")} if loaded else None),
                "default_sizes": {f.name: f.default_size for f in FAMILIES.values()}}

    def model_card_image(self, ref: str | None = None) -> Image.Image | None:
        """The preview image beside a local model (read like an upload: size and format checked)."""
        path = self.model_card(ref).get("preview")
        if not path:
            return None
        try:
            return open_upload(path)
        except DanqingError:
            return None

    def model_hash(self) -> str | None:
        """A1111's short hash of the loaded single-file model (None: a folder, or none loaded)."""
        return self.store.model_hash

    def vae_choices(self) -> list[str]:
        return self.store.vae_choices()

    def current_vae(self) -> str:
        """What was chosen: "auto", "none" or a file name."""
        return self.store.vae_choice

    def set_vae(self, choice: str) -> dict:
        self.store.set_vae(choice)
        return self.system_info()

    def current_model(self) -> str:
        return self.store.current_ref

    def switch_model(self, ref: str) -> dict:
        if self.remote is not None:  # the replicas switch with their next job
            self.store.select(ref)
        else:
            self.store.switch(ref)
        return self.system_info()

    def system_info(self) -> dict:
        info = self.store.system_info()
        info["version"] = VERSION
        info["outputs_dir"] = str(self.outputs.root)
        info["extensions"] = [ext.summary() for ext in self.extensions]
        if self.store.is_loaded():
            info["token_window"] = token_window(self.store.base())
        if self.remote is not None:  # --ray: the replicas as Serve reports them
            info["ray_replicas"] = self.remote.replicas()
        return info
