"""One engine replica: a ModelStore and the generation tasks behind a Ray Serve deployment.

The front process (pipelines/serve/remote.py) sends a job — the task's name, its typed request,
the model and VAE the front has chosen — and iterates the answer as a stream of events:
``("step", i, n)``, ``("preview", image, i, n)``, then ``("done", Generated, facts)``, or
``("error", code, fields)`` for a user's error (sent as data: the front raises it in Chinese),
``("cancelled",)``. Closing the stream (Serve cancels the request) stops the job within a step.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading

from ..errors import DanqingError, JobCancelled
from ..store import ModelStore
from ..store.settings import EngineSettings
from ..tasks import expand, registry
from ..tasks.prepare import prepare, prompt_language

log = logging.getLogger(__name__)

# The tasks a replica runs, by name: each ``task(store, request, cancel=, on_step=, on_preview=)``.
class EngineReplica:
    """The body of the Ray Serve deployment (remote.py wraps it with ``serve.deployment``)."""

    def __init__(self, settings: EngineSettings, threads: int | None = None) -> None:
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.store = ModelStore(settings)
        self.pid = os.getpid()
        log.info("engine replica %d ready (%s)", self.pid, self.store.plan.device)

    def ping(self) -> int:
        return self.pid

    def _follow_front(self, job: dict) -> None:
        """The front's model and VAE: a model switch reaches every replica with its next job."""
        if job.get("model") and job["model"] != self.store.current_ref:
            self.store.switch(job["model"])
        if job.get("vae") and job["vae"] != self.store.vae_choice:
            self.store.set_vae(job["vae"])

    def _facts(self) -> dict:
        return {"model_hash": self.store.model_hash, "vae_ref": self.store.vae_ref,
                "vae_hash": self.store.vae_hash, "replica": self.pid}

    async def run(self, job: dict):
        """Run ``job`` ({task, request, model, vae, previews, edits}) and stream its events: the
        request prepared here, where the model is (tasks/prepare.py). Task "expand" is the
        ✨ 扩写 button's ({prompt, seed}): its answer is the expanded prompt."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def put(item) -> None:
            loop.call_soon_threadsafe(events.put_nowait, item)

        def work() -> None:
            try:
                with self.store.lock:
                    self._follow_front(job)
                    if job["task"] == "expand":  # the ✨ 扩写 button: the prompt with the prompter's words
                        words = job["request"]
                        put(("done", expand.expand_prompt(self.store, words["prompt"], words["seed"],
                                                          prompt_language(self.store))[0], self._facts()))
                        return
                    request, notices = prepare(self.store, job["request"], edits=job.get("edits") or {})
                    result = registry.get(job["task"])(
                        self.store, request, cancel=cancel, on_step=lambda i, n: put(("step", i, n)),
                        on_preview=(lambda image, i, n: put(("preview", image, i, n))) if job.get("previews") else None)
                    result.notices.update(notices)
                    put(("done", result, self._facts()))
            except JobCancelled:
                put(("cancelled",))
            except DanqingError as exc:
                put(("error", exc.code, {k: str(v) for k, v in (exc.fields or {}).items()}))
            except BaseException as exc:  # noqa: BLE001 (reported to the front, logged here)
                log.exception("job failed on replica %d", self.pid)
                put(("error", "internal", {"detail": str(exc)[:200]}))

        worker = loop.run_in_executor(None, work)
        try:
            while True:
                item = await events.get()
                yield item
                if item[0] in ("done", "error", "cancelled"):
                    break
        finally:
            # The stream ended early (the front cancelled it, or went away): stop the job at its
            # next step, and let it finish unwinding before this replica takes another.
            cancel.set()
            await worker
