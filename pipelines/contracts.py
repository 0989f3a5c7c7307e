"""What ui/, api/ and extensions may ask of the studio: one Protocol per part of it
(pipelines/studio/: generation, library, gallery, training, downloads, the GPU line), and
``StudioApi``, all of them. No torch here (ui/ imports it); tests/test_architecture.py checks
that ui/ and api/ call nothing on the studio that these do not declare, and that the Studio
has everything they declare.

Attributes the edge and the UI read (``admins``, ``team_gallery``) are declared too.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

# Types of answers only: never imported at run time (they pull in torch).
if TYPE_CHECKING:
    from PIL import Image

    from .history import Entry, Page
    from .requests import (
        Caller,
        Control,
        ControlUnit,
        Img2Img,
        Inpaint,
        Outpaint,
        TrainLora,
        Txt2Img,
        Upscale,
    )
    from .tasks.train import TrainResult
    from .team import Team


class GenerationApi(Protocol):
    """Generating and editing: text to image, ControlNet, 图生图, 局部重绘, 扩图, upscaling,
    saved with their A1111 parameters (formats/infotext.py) and the AIGC label."""

    def txt2img(
        self,
        request: Txt2Img,
        client: Caller | str = "local",
        on_step=None,
        on_preview=None,
        on_wait=None,
    ) -> tuple[list[Path], dict]:
        """Generate, (upscale,) save. Returns the saved files and the info dict.
        ``client``: who asks (pipelines.requests.Caller, or just a client id for the stop switch).
        ``on_preview(image, step, total)`` gets live previews while it denoises; ``on_wait(place,
        seconds)`` the job's place in the line and the estimated wait before it starts."""
        ...

    def control(
        self,
        request: Control,
        client: Caller | str = "local",
        on_step=None,
        on_preview=None,
        on_wait=None,
    ) -> tuple[list[Path], dict]:
        """ControlNet generation with one to three units; the control maps are saved too."""
        ...

    def img2img(
        self,
        request: Img2Img,
        client: Caller | str = "local",
        on_step=None,
        on_preview=None,
        on_wait=None,
    ) -> tuple[list[Path], dict]:
        """图生图: the input denoised from ``request.strength`` (ControlNets optional)."""
        ...

    def inpaint(
        self,
        request: Inpaint,
        client: Caller | str = "local",
        on_step=None,
        on_preview=None,
        on_wait=None,
    ) -> tuple[list[Path], dict]:
        """局部重绘: the masked area repainted, every other pixel kept."""
        ...

    def outpaint(
        self,
        request: Outpaint,
        client: Caller | str = "local",
        on_step=None,
        on_preview=None,
        on_wait=None,
    ) -> tuple[list[Path], dict]:
        """扩图: the canvas grown, the new area filled to continue the picture."""
        ...

    def preview_control(self, unit: ControlUnit, client: Caller | str = "local") -> Image.Image:
        """The control map of one unit (the preview beside the control image). A depth map runs
        a model, so it waits for the GPU like any job."""
        ...

    def controlnets(self) -> list[str]: ...

    def depth_estimators(self) -> list[str]: ...

    def upscale_images(
        self,
        images: list,
        request: Upscale,
        client: Caller | str = "local",
        on_step=None,
        on_wait=None,
    ):
        """Upscale uploads (paths, bytes or PIL images; checked before decoding) and save them."""
        ...

    def upscalers(self) -> list[str]: ...

    def translators(self) -> list[str]:
        """Translation models in models/translators (tasks/translate.py)."""
        ...

    def edit_translation(self, prompt: str, english: str, client: Caller | str = "local") -> None:
        """Use ``english`` for the Chinese ``prompt`` from now on, for ``client``'s user only;
        empty: the translator's again."""
        ...

    def expand_prompt(self, prompt: str, seed: int, client: Caller | str = "local") -> str:
        """提示词扩写 before a run: ``prompt`` with a local prompter's words after it (seeded),
        as one job of the GPU queue."""
        ...

    def prompters(self) -> list[str]:
        """Instruct models in models/prompters (tasks/expand.py)."""
        ...


class LibraryApi(Protocol):
    """What can be used: base models (their cards, hashes, switching), VAEs, LoRAs, embeddings,
    极速's few-step settings, 系统信息."""

    def loras(self) -> list[dict]: ...

    def lora_preview(self, name: str) -> Image.Image | None:
        """The preview image stored beside a listed LoRA file (same name, .png/.jpg), if any."""
        ...

    def model_choices(self) -> list[dict]: ...

    def embeddings(self) -> list[dict]:
        """Textual-inversion files, usable or not (with why), for the loaded model."""
        ...

    def model_card(self, ref: str | None = None) -> dict:
        """What A1111/Civitai helpers left beside a local model (``x.json``, ``x.civitai.info``,
        ``x.preview.png`` / ``x.png``): title, description, trigger words, base model, preview."""
        ...

    def fast_settings(self) -> dict | None:
        """极速: what to use for few-step generation — the base model itself when it is a
        few-step one, else the surest few-step LoRA in models/lora (LCM before TCD before
        Hyper-SD; metadata before layout before file name). {"lora": file or None, "model": the
        base's name, "fewstep": the method and its published settings}; None when there is none."""
        ...

    def family(self) -> dict:
        """The loaded base model's family ({"name", "label", "default_size"}, or None before a
        model is loaded) and every family's default size, by name (formats/families.py)."""
        ...

    def model_card_image(self, ref: str | None = None) -> Image.Image | None:
        """The preview image beside a local model (read like an upload: size and format checked)."""
        ...

    def model_hash(self) -> str | None:
        """A1111's short hash of the loaded single-file model (None: a folder, or none loaded)."""
        ...

    def vae_choices(self) -> list[str]: ...

    def current_vae(self) -> str:
        """What was chosen: "auto", "none" or a file name."""
        ...

    def set_vae(self, choice: str) -> dict: ...

    def current_model(self) -> str: ...

    def switch_model(self, ref: str) -> dict: ...

    def system_info(self) -> dict: ...


class GalleryApi(Protocol):
    """Saved pictures and 历史: saving, reading parameters, whose file is whose (files served and
    named as inputs), the history index's views, trash and sharing."""

    def save(
        self,
        image: Image.Image,
        parameters: str,
        seed: int,
        suffix: str = "",
        user: str = "",
    ) -> Path:
        """Save an image made from generated ones (an extension's grid) with its parameters."""
        ...

    @staticmethod
    def png_parameters(image: Image.Image) -> str | None: ...

    def recent_outputs(self, limit: int = 60, user: str = "") -> list[Path]:
        """The user's newest saved images ("" without --auth: everything in outputs/<date>/)."""
        ...

    def own_output(self, path, user: str = "") -> Path | None:
        """The saved PNG in outputs/ that ``path`` names, when ``user`` may read it; else None (a
        path a browser sends back is never trusted as it is). A gallery shows Gradio's copy of
        a result (its cache keeps the file name), so a path outside outputs/ is looked up by its
        name among the user's own newest images, never opened itself."""
        ...

    @staticmethod
    def saved_parameters(path) -> str | None:
        """The parameters text of a saved image (its text chunks only; pixels are not decoded)."""
        ...

    def may_read(self, path: str, user: str = "") -> bool:
        """Whether ``user`` may read a file: their own folder's, an administrator everything, any
        logged-in user a picture (or its thumbnail) shared with the team. Pictures made before
        logins were turned on (in outputs/ outside the users' folders) are nobody's own: with
        logins only administrators read them; without logins everyone does. Files outside
        outputs/ are left to the file route's own rules."""
        ...

    def history(self, user: str = "", scope: str = "mine", text: str = "", **filters) -> Page:
        """A page of the user's saved images (or the team's shared ones, or everyone's for an
        administrator, or the user's trash), newest first, searched and filtered."""
        ...

    def history_facets(self, user: str = "", scope: str = "mine") -> dict[str, list[str]]: ...

    def history_entry(self, entry_id, user: str = "", own: bool = False) -> Entry:
        """An indexed image the user may see (``own``: may change); else ``history_not_found``."""
        ...

    @staticmethod
    def outputs_owner(user: str) -> str:
        """The owner name the history gives a user's images (their folder's name)."""
        ...

    def history_file(self, entry: Entry) -> Path: ...

    def history_thumbnail(self, entry: Entry) -> Path: ...

    def history_delete(self, entry_id, user: str = "") -> Path:
        """To the user's trash (own images only); 恢复 brings it back."""
        ...

    def history_restore(self, entry_id, user: str = "") -> Path: ...

    def history_share(self, entry_id, user: str = "", shared: bool = True) -> None:
        """Show one of the user's images in the team gallery (or take it back)."""
        ...


class TrainingApi(Protocol):
    """训练 LoRA: a run's folder and pictures, captions from a local captioner, the run itself
    (taking turns between users), where the LoRA lands."""

    def training_dir(self, name: str, user: str = "") -> Path:
        """A run's folder: outputs/[users/<user>/]training/<name>/ (pictures, checkpoint, samples)."""
        ...

    def prepare_training(self, name: str, files: list, user: str = "") -> dict:
        """Uploaded pictures, captions and zips gathered into the run's folder (its pictures
        replaced; a checkpoint there stays for 继续训练)."""
        ...

    def captioners(self) -> list[str]:
        """Image-to-text models in models/captioners (training captions)."""
        ...

    def caption_pictures(self, pictures: list[str], captioner: str, client: Caller | str = "local") -> list[str]:
        """A caption for each picture from a local captioner, as one job of the GPU queue; in
        Chinese from chat models when the base model reads Chinese (a BERT tokenizer)."""
        ...

    def can_resume(self, name: str, user: str = "") -> bool: ...

    def train_lora(
        self,
        request: TrainLora,
        run_dir: Path,
        client: Caller | str = "local",
        on_step=None,
        on_sample=None,
        resume: bool = False,
        on_wait=None,
    ) -> TrainResult:
        """Train a LoRA on the loaded model as one job of the GPU queue (停止 keeps the last
        checkpoint; ``resume`` continues from it). The result lands in the user's models folder:
        models/lora/ (with logins models/lora/<user>/, so teammates' names never collide)."""
        ...

    def trained_lora_dir(self, user: str = "") -> Path:
        """Where a user's trained LoRAs go (always the user's own models folder, never a cache)."""
        ...

    def trained_lora_name(self, path: Path) -> str:
        """The LoRA list's name of a trained file (relative to models/lora)."""
        ...


class DownloadsApi(Protocol):
    """模型下载: a repository's files, downloads started, cancelled and listed."""

    def download_sources(self) -> dict:
        """Where each source downloads from now (HF_ENDPOINT, MODELSCOPE_ENDPOINT honoured)."""
        ...

    def download_suggestions(self) -> list[tuple[str, str, str, str]]:
        """常用模型: (name, source, repository, folder kind), Chinese models first."""
        ...

    def download_plan(self, source: str, repo: str) -> list[dict]:
        """The repository's files with sizes, before anything is fetched."""
        ...

    def start_download(
        self,
        source: str,
        repo: str,
        kind: str,
        file: str | None = None,
        sha256: str | None = None,
        user: str = "",
    ) -> dict: ...

    def cancel_download(self, job_id: str, user: str = "", admin: bool = True) -> dict: ...

    def download_rows(self) -> list[dict]: ...


class LineApi(Protocol):
    """The GPU line as people see and steer it: 停止, the queue view, cancelling, the jobs a crash
    cut off, 用量, holding the GPU for several jobs (an A1111 batch, a grid's model) and giving way."""

    def open_batch(self, user: str, kind: str, count: int = 1, address: str = "local") -> Any:
        """A request that runs ``count`` jobs in a row: its own client id, for /progress and /interrupt."""
        ...

    def close_batch(self, batch) -> None: ...

    def interrupt_batch(self, batch) -> None:
        """Stop a batch: its running job within a step, its waiting ones at once."""
        ...

    def running_job(self) -> tuple[dict | None, Any]:
        """(the running job's snapshot or None when idle, its batch or None)."""
        ...

    def stop(self, client: str) -> bool: ...

    def queue_view(self, user: str = "", address: str = "") -> list[dict]:
        """The GPU line as ``user`` (without logins: the client at ``address``) may see it: the
        running job and the waiting ones in the order they will go, with place and estimated
        wait. Their own jobs (everyone's for an administrator) with who and what and an id to
        cancel; others' only as "someone"."""
        ...

    def unfinished_jobs(self, user: str = "", address: str = "") -> list[dict]:
        """The jobs of ``user`` (without logins: of ``address``) that a restart or crash cut
        off before they finished ({at, kind}), told once."""
        ...

    def cancel_job(self, job_id: str, user: str = "", address: str = "") -> dict:
        """Cancel a waiting (or running) job by its id from ``queue_view``: one's own, or any for
        an administrator. Anything else is ``job_not_found`` (the same as no such job)."""
        ...

    def usage(self, user: str = "", day_from: str = "", day_to: str = "") -> list[dict]:
        """用量 per user over the days given: images made (the history), GPU jobs, GPU seconds,
        failed and cancelled jobs. Administrators only (when there are logins)."""
        ...

    def hold_gpu(self, batch=None):
        """The GPU for several jobs in a row (the A1111 API's model override and batches): the
        batch (pipelines.jobs.Batch) waits for its turn like any job."""
        ...

    def interrupt(self, user: str) -> int:
        """A1111's /interrupt for ``user``: their batches, running and waiting jobs and training
        runs (each within a step). Returns how many were stopped."""
        ...

    def give_way(self, batch) -> bool:
        """Between the jobs of a held batch (the A1111 API's n_iter): when someone else waits,
        let them go first, then continue. Returns whether it gave way."""
        ...

    def others_waiting(self) -> bool: ...

    def on_model(self, ref: str, client: Caller | str = "local", kind: str = "txt2img") -> AbstractContextManager[Any]:
        """Several jobs of ``client`` on base model ``ref`` (an X/Y grid's model axis): the GPU
        is held for them (nobody else's job runs on the borrowed model), the model switched if
        needed and switched back afterwards. 停止 reaches it while it waits and between jobs."""
        ...


class StudioApi(GenerationApi, LibraryApi, GalleryApi, TrainingApi, DownloadsApi, LineApi, Protocol):
    """The whole studio, as ui/, api/ and extensions see it."""

    team: Team  # who administers (pipelines/team.py): the one policy of the whole app
