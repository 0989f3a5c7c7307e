"""The studio: the facade the UI, the APIs and extensions call. Request → task → save.

Each generation method takes one validated request (pipelines/requests.py), runs its task on
the store inside the job context (pipelines/jobs.py: GPU lock, stop switch, progress, out of
memory), and saves the results with their A1111 parameters and AIGC label. Everything a caller
needs of the engine (lists of models, the current model, saving, stopping) is a method here, so
nobody reaches into the store.

It holds no Gradio and no user-facing text; errors are ``DanqingError`` codes.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from PIL import Image

from .downloads import Downloads, endpoint
from .errors import DanqingError, ParamError
from .formats import fewstep
from .formats.cards import read_card
from .formats import uploads
from .formats.images import image_size, open_upload
from .formats.weights import file_hash
from .formats import infotext
from .formats.pnginfo import read_parameters
from . import history as index
from .jobs import Jobs, Ticket, Turns, as_caller, turn_key
from .outputs import OutputWriter, user_folder
from .requests import (INPAINT_FILL_NAMES, MAX_UPSCALE_IMAGES, Caller, Control,
                       ControlUnit, Img2Img, Inpaint, Outpaint, TRAIN_NAME, TrainLora, Txt2Img, Upscale, image_given,
                       check_output)
from .store import ModelStore
from .tasks import annotators, captions, controlnet, lora, registry, train, upscale
from .tasks.denoise import Generated
from .tasks.schedulers import step_eta
from .tasks.prompts import token_window

log = logging.getLogger(__name__)

VERSION = "0.1.0"
OWN_LOOKUP = 2000  # how many of a user's newest images a gallery copy is looked up among
# Request fields that the info JSON does not repeat (the post-step is reported by its result).
_NOT_IN_INFO = ("hires_upscaler", "hires_scale", "draft", "hires_pass", "hires_strength", "hires_steps")


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


def _job_id(client: str) -> str:
    """A queued job's public id: a hash of its stop-switch key (a page's session), never the key."""
    return hashlib.sha256(client.encode()).hexdigest()[:12]


class _NoLock:
    """The jobs' lock when the GPUs are Ray Serve replicas: each replica has its own."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def acquire(self, *args, **kwargs):
        return True

    def release(self):
        pass


NO_LOCK = _NoLock()


class Studio:
    def __init__(self, store: ModelStore, outputs: OutputWriter, extensions: list = (),
                 downloads: Downloads | None = None) -> None:
        self.store = store
        self.outputs = outputs
        self.jobs = Jobs(store.lock, store.plan.device)
        # Loaded extensions (extensions.LoadedExtension), listed in system_info.
        self.extensions = list(extensions)
        # 模型下载: into the user's models folder (in demo mode too: the bundle is a cache).
        self.downloads = downloads or Downloads(store.folders, offline=not store.settings.allow_download)
        # A team server's administrators (see everyone's history and queue) and whether every
        # image is in the team gallery (--team-gallery); app.py sets them.
        self.admins: frozenset[str] = frozenset()
        self.team_gallery = False
        # The engine replicas (pipelines/serve, --ray), or None: the tasks run here.
        self.remote = None
        # 训练 LoRA: runs take turns between users (one trains at a time), each slice at most
        # this many steps while another user's run waits; an operator's cap on one run's steps.
        self.training_turns = Turns()
        self.train_slice_steps = 100
        self.max_train_steps = 0
        self.usage_log = index.UsageLog(outputs.root)
        self.jobs.on_finished = self.usage_log.record
        try:
            self.usage_log.recover()
        except Exception:  # an unwritable outputs folder shows itself at the first save
            log.exception("reading the job journal failed")
        self.jobs.journal = self.usage_log

    def use_remote(self, engine) -> None:
        """Run generation on Ray Serve replicas (pipelines/serve/remote.RayEngine): one turn
        per replica in the fair queue, and no local GPU lock around them."""
        self.remote = engine
        self.jobs.lock = NO_LOCK
        self.jobs.turns.set_capacity(engine.options.capacity)

    def _generate(self, name: str, request, cancel, hook, on_preview) -> Generated:
        """Run the generation task ``name`` (tasks/registry.py) here or on a replica."""
        if self.remote is None:
            return registry.get(name)(self.store, request, cancel=cancel, on_step=hook, on_preview=on_preview)
        result, facts = self.remote.run(name, request, model=self.current_model(), vae=self.current_vae(),
                                        cancel=cancel, on_step=hook, on_preview=on_preview)
        result.facts = facts
        return result

    # -- jobs ---------------------------------------------------------------------------------
    def stop(self, client: str) -> bool:
        return self.jobs.stop(client)

    def queue_view(self, user: str = "", address: str = "") -> list[dict]:
        """The GPU line as ``user`` (without logins: the client at ``address``) may see it: the
        running job and the waiting ones in the order they will go, with place and estimated
        wait. Their own jobs (everyone's for an administrator) with who and what and an id to
        cancel; others' only as "someone"."""
        admin = user in self.admins
        me = turn_key(Caller(user=user, address=address or "local"))
        rows = []
        for row in self.jobs.queue():
            mine = row["key"] == me
            visible = admin or mine
            rows.append({"id": _job_id(row["client"]) if visible else None, "mine": mine,
                         "user": row["user"] if visible else "", "kind": row["kind"] if visible else "",
                         "state": row["state"], "place": row["place"], "waited": row["waited"], "eta": row["eta"],
                         "step": row.get("step") if visible else None, "total": row.get("total") if visible else None})
        return rows

    def unfinished_jobs(self, user: str = "", address: str = "") -> list[dict]:
        """The jobs of ``user`` (without logins: of ``address``) that a restart or crash cut
        off before they finished ({at, kind}), told once."""
        return self.usage_log.unfinished(turn_key(Caller(user=user, address=address or "local")))

    def cancel_job(self, job_id: str, user: str = "", address: str = "") -> dict:
        """Cancel a waiting (or running) job by its id from ``queue_view``: one's own, or any for
        an administrator. Anything else is ``job_not_found`` (the same as no such job)."""
        me = turn_key(Caller(user=user, address=address or "local"))
        for row in self.jobs.queue():
            if _job_id(row["client"]) != str(job_id):
                continue
            if not (user in self.admins or row["key"] == me):
                break
            batch = self.jobs.batch(row["client"])
            if batch is not None:
                self.jobs.interrupt_batch(batch)
            else:
                self.jobs.stop(row["client"])
            # A waiting job leaves the line within a poll: answer once it has (the list shown
            # next is then right).
            deadline = time.monotonic() + 1.0
            while row["state"] == "waiting" and time.monotonic() < deadline and any(
                    t.client == row["client"] for t in self.jobs.turns.line()):
                time.sleep(0.05)
            return {"id": job_id, "state": row["state"], "cancelled": True}
        raise ParamError("job_not_found")

    def usage(self, user: str = "", day_from: str = "", day_to: str = "") -> list[dict]:
        """用量 per user over the days given: images made (the history), GPU jobs, GPU seconds,
        failed and cancelled jobs. Administrators only (when there are logins)."""
        if user and user not in self.admins:
            raise ParamError("admin_only_usage")
        jobs = self.usage_log.summary(day_from, day_to)
        images = {row["owner"]: row["images"] for row in self.outputs.history.usage(day_from, day_to)}
        names = {self.outputs_owner(u): u for u in jobs}  # folder name → user name
        rows = {}
        for owner, count in images.items():
            rows[names.get(owner, owner)] = {"images": count}
        for name, row in jobs.items():
            rows.setdefault(name, {"images": images.get(self.outputs_owner(name), 0)}).update(row)
        return [{"user": name, "images": r.get("images", 0), "jobs": r.get("jobs", 0),
                 "gpu_seconds": r.get("gpu_seconds", 0.0), "failed": r.get("failed", 0),
                 "cancelled": r.get("cancelled", 0)}
                for name, r in sorted(rows.items(), key=lambda kv: -kv[1].get("gpu_seconds", 0.0))]

    def hold_gpu(self, batch=None):
        """The GPU for several jobs in a row (the A1111 API's model override and batches): the
        batch (pipelines.jobs.Batch) waits for its turn like any job."""
        return self.jobs.hold(batch)

    def interrupt(self, user: str) -> int:
        """A1111's /interrupt for ``user``: their batches, running and waiting jobs and training
        runs (each within a step). Returns how many were stopped."""
        return self.jobs.interrupt(user) + sum(self.jobs.stop(t.client) for t in self.training_turns.line()
                                               if user and t.user == user)

    def give_way(self, batch) -> bool:
        """Between the jobs of a held batch (the A1111 API's n_iter): when someone else waits,
        let them go first, then continue. Returns whether it gave way."""
        return self.jobs.give_way(batch.caller, batch.kind)

    def others_waiting(self) -> bool:
        return self.jobs.turns.others_waiting()

    @contextmanager
    def on_model(self, ref: str, client: Caller | str = "local", kind: str = "txt2img"):
        """Several jobs of ``client`` on base model ``ref`` (an X/Y grid's model axis): the GPU
        is held for them (nobody else's job runs on the borrowed model), the model switched if
        needed and switched back afterwards. 停止 reaches it while it waits and between jobs."""
        caller = as_caller(client)
        self.store.choice(ref)  # an unknown model is refused before waiting
        with self.jobs.hold(caller=caller, kind=kind):
            previous = self.current_model()
            if ref != previous:
                self.switch_model(ref)
            try:
                yield
            finally:
                if ref != previous:
                    self.switch_model(previous)

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
            result = self._generate("txt2img", request, cancel, hook, on_preview)
            return self._save(result, {"draft": request.draft}, user=caller.user)

    def control(self, request: Control, client: Caller | str = "local", on_step=None,
                on_preview=None, on_wait=None) -> tuple[list[Path], dict]:
        """ControlNet generation with one to three units; the control maps are saved too."""
        caller = as_caller(client)
        self.outputs.check_quota(caller.user)
        with self.jobs.run(caller, on_step, kind="controlnet", on_wait=on_wait) as (cancel, hook):
            name = "control_hires" if request.base.hires_pass else "controlnet"
            result = self._generate(name, request, cancel, hook, on_preview)
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
            result = self._generate(name, request, cancel, hook, on_preview)
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

    # -- 训练 LoRA ----------------------------------------------------------------------------
    def training_dir(self, name: str, user: str = "") -> Path:
        """A run's folder: outputs/[users/<user>/]training/<name>/ (pictures, checkpoint, samples)."""
        if not isinstance(name, str) or not TRAIN_NAME.match(name.strip()):
            raise ParamError("train_bad_name", name=str(name)[:80])
        return self.outputs.user_root(user) / "training" / name.strip()

    def _check_inputs(self, sources, user: str = "") -> None:
        """Files named as a job's inputs: inside outputs/ only what ``user`` may read (the rule
        of the file route; the edge checks first, this is the engine's own guard)."""
        for source in sources:
            if isinstance(source, (str, Path)) and not self.may_read(str(source), user):
                raise ParamError("file_not_found")

    def prepare_training(self, name: str, files: list, user: str = "") -> dict:
        """Uploaded pictures, captions and zips gathered into the run's folder (its pictures
        replaced; a checkpoint there stays for 继续训练)."""
        self._check_inputs(files or [], user)
        run_dir = self.training_dir(name, user)
        images = run_dir / "images"
        if images.exists():
            shutil.rmtree(images)
        # Training folders count in the user's quota: what an upload may write is what is left.
        quota = self.outputs.quota_bytes
        self.outputs.forget_usage(user)
        left = quota - self.outputs.used_bytes(user) if quota > 0 else None
        try:
            pictures, captions = uploads.gather(list(files or []), images, budget=left)
        finally:
            self.outputs.forget_usage(user)
            if run_dir.is_dir() and not any(run_dir.iterdir()):
                run_dir.rmdir()  # a refused upload leaves no empty run behind
        return {"run_dir": str(run_dir), "images": pictures, "captions": captions}

    def captioners(self) -> list[str]:
        """Image-to-text models in models/captioners (training captions)."""
        return captions.list_captioners(self.store)

    def caption_pictures(self, pictures: list[str], captioner: str, client: Caller | str = "local") -> list[str]:
        """A caption for each picture from a local captioner, as one job of the GPU queue; in
        Chinese from chat models when the base model reads Chinese (a BERT tokenizer)."""
        with self.jobs.run(as_caller(client), kind="caption") as (cancel, _hook):
            chinese = type(self.store.base().tokenizer).__name__.startswith("Bert")
            return captions.caption_images(self.store, captioner, list(pictures), "zh" if chinese else "en",
                                           cancel=cancel)

    def can_resume(self, name: str, user: str = "") -> bool:
        try:
            return (self.training_dir(name, user) / train.STATE).is_file()
        except ParamError:
            return False

    def train_lora(self, request: TrainLora, run_dir: Path, client: Caller | str = "local", on_step=None,
                   on_sample=None, resume: bool = False, on_wait=None) -> train.TrainResult:
        """Train a LoRA on the loaded model as one job of the GPU queue (停止 keeps the last
        checkpoint; ``resume`` continues from it). The result lands in the user's models folder:
        models/lora/ (with logins models/lora/<user>/, so teammates' names never collide).

        Runs take turns between users like generation: one run trains at a time (the runs share
        the one resident U-Net), the next is the waiting one of the user served longest ago, and
        a run that has trained ``train_slice_steps`` while another user's run waits checkpoints
        and lets it go first, then resumes exactly where it was. Between steps any waiting
        generation job goes first. ``on_wait(place)``: the run's place among waiting runs."""
        caller = as_caller(client)
        lora_dir = self.trained_lora_dir(caller.user)
        lora_dir.mkdir(parents=True, exist_ok=True)

        def give_way(now: bool = False) -> bool:
            """Between steps: are others waiting? (now=True: let them run first.)"""
            if now:
                self.jobs.give_way(caller, kind="train")
                return True
            return self.jobs.turns.others_waiting()

        def pause(steps_this_time: int) -> bool:
            return steps_this_time >= self.train_slice_steps and self.training_turns.others_waiting()

        ticket = Ticket.of(caller, "train")
        with self.jobs.armed(caller.client) as stopped:
            while True:
                self.training_turns.acquire(ticket.key, stopped, ticket, on_wait)
                try:
                    with self.jobs.run(caller, kind="train") as (cancel, _hook):
                        result = train.train(self.store, request, Path(run_dir), lora_dir, cancel=cancel,
                                             on_step=on_step, on_sample=on_sample, resume=resume, give_way=give_way,
                                             pause=pause, max_steps=self.max_train_steps)
                finally:
                    self.training_turns.release()
                if not result.paused:
                    return result
                resume = True  # the other user's run goes first; then this one continues exactly
                ticket = Ticket.of(caller, "train")

    def trained_lora_dir(self, user: str = "") -> Path:
        """Where a user's trained LoRAs go (always the user's own models folder, never a cache)."""
        folder = self.store.folders.folder("lora")
        return folder / user_folder(user) if user else folder

    def trained_lora_name(self, path: Path) -> str:
        """The LoRA list's name of a trained file (relative to models/lora)."""
        return Path(path).relative_to(self.store.folders.folder("lora")).as_posix()

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
        return [
            {"ref": c.ref, "local": c.local, "kind": c.kind,
             "hash": self.store.model_hash if c.ref == loaded else None}
            for c in self.store.model_choices()
        ]

    def embeddings(self) -> list[dict]:
        """Textual-inversion files, usable or not (with why), for the loaded model."""
        width = self.store.base().text_encoder.get_input_embeddings().weight.shape[1]
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
            unet_config = dict(self.store.base().unet.config) if self.remote is None else None
        except Exception:  # not loadable now: its name and card still tell
            pass
        found = fewstep.recognise_base(model, unet_config, self.model_card(model))
        if found is not None:
            return {"lora": None, "model": model, "fewstep": found.as_dict()}
        ranked = sorted((row for row in self.loras() if row.get("fewstep")),
                        key=lambda row: (fewstep.RANK.index(row["fewstep"]["evidence"]),
                                         list(fewstep.METHODS).index(row["fewstep"]["method"]), row["name"]))
        if not ranked:
            return None
        return {"lora": ranked[0]["name"], "model": model, "fewstep": ranked[0]["fewstep"]}

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

    # -- 模型下载 ----------------------------------------------------------------------------
    def download_sources(self) -> dict:
        """Where each source downloads from now (HF_ENDPOINT, MODELSCOPE_ENDPOINT honoured)."""
        return {source: endpoint(source) for source in ("huggingface", "hf_mirror", "modelscope")}

    def download_plan(self, source: str, repo: str) -> list[dict]:
        """The repository's files with sizes, before anything is fetched."""
        return [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.downloads.files(source, repo)]

    def start_download(self, source: str, repo: str, kind: str, file: str | None = None,
                       sha256: str | None = None, user: str = "") -> dict:
        return self.downloads.start(source, repo, kind, file=file or None, sha256=sha256 or None, user=user).row()

    def cancel_download(self, job_id: str, user: str = "", admin: bool = True) -> dict:
        return self.downloads.cancel(job_id, user, admin).row()

    def download_rows(self) -> list[dict]:
        return [job.row() for job in self.downloads.jobs()]

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

    # -- outputs and PNG info ---------------------------------------------------------------
    def save(self, image: Image.Image, parameters: str, seed: int, suffix: str = "", user: str = "") -> Path:
        """Save an image made from generated ones (an extension's grid) with its parameters."""
        return self.outputs.save(image, parameters, seed, suffix=suffix, user=user)

    @staticmethod
    def png_parameters(image: Image.Image) -> str | None:
        return read_parameters(image)

    def recent_outputs(self, limit: int = 60, user: str = "") -> list[Path]:
        """The user's newest saved images ("" without --auth: everything in outputs/<date>/)."""
        return self.outputs.recent(limit, user)

    def own_output(self, path, user: str = "") -> Path | None:
        """The saved PNG in outputs/ that ``path`` names, when ``user`` may read it; else None (a
        path a browser sends back is never trusted as it is). A gallery shows Gradio's copy of
        a result (its cache keeps the file name), so a path outside outputs/ is looked up by its
        name among the user's own newest images, never opened itself."""
        try:
            resolved = Path(path).resolve()
        except (OSError, TypeError, ValueError):
            return None
        try:
            resolved.relative_to(self.outputs.root.resolve())
        except ValueError:
            resolved = next((p.resolve() for p in self.recent_outputs(OWN_LOOKUP, user) if p.name == resolved.name), None)
            if resolved is None:
                return None
        if resolved.suffix.lower() != ".png" or not resolved.is_file() or not self.may_read(resolved, user):
            return None
        return resolved

    @staticmethod
    def saved_parameters(path) -> str | None:
        """The parameters text of a saved image (its text chunks only; pixels are not decoded)."""
        try:
            with Image.open(path) as image:
                return read_parameters(image)
        except OSError:
            return None

    def may_read(self, path: str, user: str = "") -> bool:
        """Whether ``user`` may read a file: their own folder's, an administrator everything, any
        logged-in user a picture (or its thumbnail) shared with the team. Pictures made before
        logins were turned on (in outputs/ outside the users' folders) are nobody's own: with
        logins only administrators read them; without logins everyone does. Files outside
        outputs/ are left to the file route's own rules."""
        root = self.outputs.root.resolve()
        try:
            resolved = Path(path).resolve()
            inner = resolved.relative_to(root).parts
        except (OSError, TypeError, ValueError):
            return True  # not in outputs/: the file route's own rules decide
        # In outputs/ only pictures and thumbnails are files to serve: never the index, the
        # sharing lists, a half-written file or a training checkpoint.
        if resolved.suffix.lower() not in (".png", ".webp") or any(
                p.startswith(".") and p not in (index.THUMBS_DIR, index.TRASH_DIR) for p in inner):
            return False
        if not user:  # no logins: everything outside the users' folders
            return inner[:1] != (index.USERS_DIR,)
        if user in self.admins:
            return True
        if inner[:1] != (index.USERS_DIR,):
            # Made before logins were turned on: nobody's own, an administrator's 全部 only.
            return False
        if self.outputs.may_read(path, user):
            return True
        try:
            picture = index.picture_of(self.outputs.root.resolve(), Path(path).resolve())
        except (OSError, ValueError):
            return False
        entry = self.outputs.history.by_path(picture)
        return entry is not None and not entry.trashed and (entry.shared or self.team_gallery)

    # -- 历史 (history) -------------------------------------------------------------------------
    def _scope(self, user: str, scope: str) -> tuple[list[str] | None, bool, bool]:
        """(owners, shared only, trashed) of a history view; an unknown or forbidden scope is
        refused."""
        own = [self.outputs_owner(user)]
        if scope == "mine":
            return own, False, False
        if scope == "trash":
            return own, False, True
        if scope == "team" and user:
            return None, not self.team_gallery, False
        if scope == "all" and user in self.admins:
            return None, False, False
        raise ParamError("history_bad_scope", value=str(scope)[:20])

    def history(self, user: str = "", scope: str = "mine", text: str = "", **filters) -> index.Page:
        """A page of the user's saved images (or the team's shared ones, or everyone's for an
        administrator, or the user's trash), newest first, searched and filtered."""
        owners, shared_only, trashed = self._scope(user, scope)
        return self.outputs.history.search(owners, text, shared_only=shared_only, trashed=trashed, **filters)

    def history_facets(self, user: str = "", scope: str = "mine") -> dict[str, list[str]]:
        owners, shared_only, _ = self._scope(user, scope if scope != "trash" else "mine")
        return self.outputs.history.facets(owners, shared_only)

    def history_entry(self, entry_id, user: str = "", own: bool = False) -> index.Entry:
        """An indexed image the user may see (``own``: may change); else ``history_not_found``."""
        try:
            entry = self.outputs.history.get(int(entry_id))
        except (TypeError, ValueError):
            entry = None
        if entry is not None and not (self.outputs.root / entry.path).is_file():
            self.outputs.history.forget(entry)  # deleted by hand: the index catches up
            entry = None
        mine = entry is not None and entry.owner == self.outputs_owner(user)
        if entry is None or (own and not mine) or not (mine or self.may_read(str(self.outputs.root / entry.path), user)):
            raise ParamError("history_not_found")
        return entry

    @staticmethod
    def outputs_owner(user: str) -> str:
        """The owner name the history gives a user's images (their folder's name)."""
        return user_folder(user) if user else ""

    def history_file(self, entry: index.Entry) -> Path:
        return self.outputs.root / entry.path

    def history_thumbnail(self, entry: index.Entry) -> Path:
        try:
            return index.thumbnail(self.outputs.root, entry)
        except OSError:
            return self.history_file(entry)

    def history_delete(self, entry_id, user: str = "") -> Path:
        """To the user's trash (own images only); 恢复 brings it back."""
        entry = self.history_entry(entry_id, user, own=True)
        if entry.trashed:
            raise ParamError("history_already_deleted")
        return self.outputs.history.move(entry, to_trash=True)

    def history_restore(self, entry_id, user: str = "") -> Path:
        entry = self.history_entry(entry_id, user, own=True)
        if not entry.trashed:
            raise ParamError("history_not_deleted")
        return self.outputs.history.move(entry, to_trash=False)

    def history_share(self, entry_id, user: str = "", shared: bool = True) -> None:
        """Show one of the user's images in the team gallery (or take it back)."""
        entry = self.history_entry(entry_id, user, own=True)
        if entry.trashed:
            raise ParamError("history_already_deleted")
        self.outputs.history.set_shared(entry, bool(shared))
