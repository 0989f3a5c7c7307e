"""训练 LoRA: a run's folder and pictures, captions from a local captioner, the run itself
(taking turns between users), where the LoRA lands.

A part of the studio (pipelines/studio/__init__.py): it works on the attributes the Studio
sets up (store, outputs, jobs, ...); ui/ and api/ see it through pipelines/contracts.py."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import ParamError
from ..formats import uploads
from ..jobs import Ticket, as_caller
from ..outputs import user_folder
from ..requests import TRAIN_NAME, Caller, TrainLora
from ..tasks import captions, train


class Training:
    # -- 训练 LoRA ----------------------------------------------------------------------------
    def training_dir(self, name: str, user: str = "") -> Path:
        """A run's folder: outputs/[users/<user>/]training/<name>/ (pictures, checkpoint, samples)."""
        if not isinstance(name, str) or not TRAIN_NAME.match(name.strip()):
            raise ParamError("train_bad_name", name=str(name)[:80])
        return self.outputs.user_root(user) / "training" / name.strip()

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
