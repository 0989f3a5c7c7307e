"""The one job context: the GPU lock, one stop switch per client, progress of the running job,
out-of-memory turned into a friendly error with the failed job's memory freed.

Every caller that runs a job (UI events, the Gradio API, the A1111 API, extensions) goes through
``Jobs.run`` via the studio; nobody else takes the lock.
"""

from __future__ import annotations

import datetime as _dt
import logging
import threading
import time
import traceback
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field

from .errors import DanqingError
from .store.devices import free_memory, is_oom

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """A request that runs several jobs in a row (an A1111 ``n_iter`` call, an extra's upscale):
    its own client id, who asked, and where it stands, for /progress and /interrupt."""

    user: str
    kind: str
    job_count: int = 1
    job_no: int = 0
    interrupted: bool = False
    client: str = field(default_factory=lambda: f"sdapi-{uuid.uuid4().hex[:12]}")
    started: float = field(default_factory=time.time)
    timestamp: str = field(default_factory=lambda: _dt.datetime.now().strftime("%Y%m%d%H%M%S"))
    last_image: str | None = None  # base64 of the newest finished image (the progress preview)


class Jobs:
    """The job context of one studio: the GPU lock, stop switches, progress and batches.

    ``lock`` is the store's re-entrant lock: a job holds it from start to end, so "switch the
    LoRAs, then denoise" never interleaves between users, and a model switch waits for the job.
    """

    def __init__(self, lock, device) -> None:
        self.lock = lock
        self.device = device
        self._guard = threading.Lock()
        self._running: dict[str, threading.Event] = {}
        self._batches: dict[str, Batch] = {}
        self._progress = Progress()

    # 1. One job ---------------------------------------------------------------------------------
    @contextmanager
    def run(self, client: str, on_step=None):
        """Run a job for ``client``: yields (cancel event, step hook). The stop switch is armed
        before waiting for the GPU (停止 while queued ends the job at its first step check);
        out of memory becomes ``out_of_memory`` with the failed job's memory freed."""
        cancel = self._start(client)
        hook = self._progress.track(client, on_step)
        out_of_memory = False
        try:
            with self.lock:
                yield cancel, hook
        except Exception as exc:
            if not is_oom(exc):
                raise
            log.warning("out of memory: %s", exc)
            # The finished frames of the failed job (U-Net forward, sampler loop) hold its
            # tensors through the traceback; clear them, or the memory stays taken.
            traceback.clear_frames(exc.__traceback__)
            out_of_memory = True
        finally:
            self._finish(client, cancel)
            self._progress.finish(client)
        if out_of_memory:
            # Raised outside the except block, so the collection runs with the frames cleared.
            free_memory(self.device)
            raise DanqingError("out_of_memory")

    @contextmanager
    def hold(self):
        """The GPU for several jobs in a row (an API request's model override and batches)."""
        with self.lock:
            yield

    def _start(self, client: str) -> threading.Event:
        event = threading.Event()
        with self._guard:
            self._running[client] = event
        return event

    def _finish(self, client: str, event: threading.Event) -> None:
        with self._guard:
            if self._running.get(client) is event:
                del self._running[client]

    def stop(self, client: str) -> bool:
        """停止: stops ``client``'s job, nobody else's."""
        with self._guard:
            event = self._running.get(client)
        if event is None:
            return False
        event.set()
        return True

    # 2. Batches ---------------------------------------------------------------------------------
    def open_batch(self, user: str, kind: str, job_count: int = 1) -> Batch:
        batch = Batch(user=user, kind=kind, job_count=job_count)
        with self._guard:
            self._batches[batch.client] = batch
        return batch

    def close_batch(self, batch: Batch) -> None:
        with self._guard:
            self._batches.pop(batch.client, None)

    def batch(self, client: str) -> Batch | None:
        with self._guard:
            return self._batches.get(client)

    def batches_of(self, user: str) -> list[Batch]:
        with self._guard:
            return [b for b in self._batches.values() if b.user == user]

    def interrupt(self, user: str) -> int:
        """Stops ``user``'s batches (running or waiting); returns how many."""
        batches = self.batches_of(user)
        for batch in batches:
            batch.interrupted = True
            self.stop(batch.client)
        return len(batches)

    def snapshot(self) -> dict | None:
        """{client, step, total, seconds_per_step} of the running job, or None when idle."""
        return self._progress.snapshot()


class Progress:
    """What the job on the GPU is doing (client, step, total, seconds per step), for the API's
    progress route. Fed by the step hook; read at any time without waiting for the GPU lock. Only
    one job samples at a time (the GPU lock), so the latest report is the running job."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict | None = None

    def track(self, client: str, on_step=None):
        """A step hook that records progress for ``client``, then calls ``on_step``."""
        token = object()

        def hook(step: int, total: int) -> None:
            now = time.time()
            with self._lock:
                state = self._state
                if state is None or state["token"] is not token:
                    state = self._state = {"token": token, "client": client, "first": (now, step)}
                state.update(step=step, total=total, updated=now)
            if on_step is not None:
                on_step(step, total)

        return hook

    def finish(self, client: str) -> None:
        with self._lock:
            if self._state is not None and self._state["client"] == client:
                self._state = None

    def snapshot(self) -> dict | None:
        """{client, step, total, seconds_per_step} of the running job, or None when idle."""
        with self._lock:
            state = self._state
            if state is None:
                return None
            (t0, s0), step = state["first"], state["step"]
            rate = (state["updated"] - t0) / (step - s0) if step > s0 else None
            return {"client": state["client"], "step": step, "total": state["total"], "seconds_per_step": rate}
