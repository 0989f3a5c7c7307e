"""The studio: the facade the UI, the APIs and extensions call. Request → task → save.

Each generation method takes one validated request (pipelines/requests.py), runs its task on
the store inside the job context (pipelines/jobs.py: GPU lock, stop switch, progress, out of
memory), and saves the results with their A1111 parameters and AIGC label. Everything a caller
needs of the engine (lists of models, the current model, saving, stopping) is a method here, so
nobody reaches into the store.

It holds no Gradio and no user-facing text; errors are ``DanqingError`` codes.

The studio is made of parts a newcomer can hold, one module each, each with its Protocol in
pipelines/contracts.py (no torch there: ui/ and api/ are checked against them): generation.py,
library.py, gallery.py (saved pictures and 历史), training.py, downloads.py, line.py (the GPU
line as people see and steer it)."""

from __future__ import annotations

import logging

from .. import history as index
from ..downloads import Downloads
from ..jobs import Jobs, Turns
from ..outputs import OutputWriter
from ..store import ModelStore
from ..team import Team
from .common import NO_LOCK, VERSION
from .downloads import Downloading
from .gallery import Gallery
from .generation import Generation
from .library import Library
from .line import Line
from .training import Training

__all__ = ["NO_LOCK", "VERSION", "Studio"]

log = logging.getLogger(__name__)


class Studio(Generation, Library, Gallery, Training, Downloading, Line):
    def __init__(self, store: ModelStore, outputs: OutputWriter, extensions: list = (),
                 downloads: Downloads | None = None) -> None:
        self.store = store
        self.outputs = outputs
        self.jobs = Jobs(store.lock, store.plan.device)
        # Loaded extensions (extensions.LoadedExtension), listed in system_info.
        self.extensions = list(extensions)
        # 模型下载: into the user's models folder (in demo mode too: the bundle is a cache).
        self.downloads = downloads or Downloads(store.folders, offline=not store.settings.allow_download)
        # Who administers (sees everyone's history and queue) and whether every picture is in
        # the team gallery: one policy for the whole app (pipelines/team.py); app.py sets it.
        self.team = Team()
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
