"""The one job context: turns at the GPU, the GPU lock, one stop switch per client, progress of
the running job, out-of-memory turned into a friendly error with the failed job's memory freed.

Every caller that runs a job (UI events, the Gradio API, the A1111 API, extensions) goes through
``Jobs.run`` (or ``Jobs.hold`` for several jobs in a row) via the studio; nobody else takes the
lock. Waiting jobs take turns by address (``Turns``): whatever route a job came by, a client with
eight jobs waiting does not go before another client's first one.
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

from .errors import DanqingError, JobCancelled
from .requests import Caller
from .store.devices import free_memory, is_oom

log = logging.getLogger(__name__)


def as_caller(client: "Caller | str") -> Caller:
    return client if isinstance(client, Caller) else Caller(client=client, address=client)


class Turns:
    """Who gets the GPU next: the oldest waiting job of the address served longest ago (an
    address never served goes first; ties go to the earliest arrival). So one client with eight
    jobs waiting takes turns with another client's first one instead of going before it.
    Re-entrant per thread (a batch holds the GPU, its jobs run inside). A waiting job whose stop
    switch is set leaves the line at once (JobCancelled)."""

    MEMORY = 4096  # addresses whose last turn is remembered (the oldest are forgotten)

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._holder: int | None = None
        self._depth = 0
        self._arrivals = 0
        self._grants = 0
        self._waiting: dict[str, list[tuple[int, object]]] = {}  # address -> (arrival, ticket), oldest first
        self._served: dict[str, int] = {}  # address -> number of its last turn

    def acquire(self, address: str, cancel: threading.Event | None = None) -> None:
        me = threading.get_ident()
        with self._cond:
            if self._holder == me:
                self._depth += 1
                return
            self._arrivals += 1
            entry = (self._arrivals, object())
            self._waiting.setdefault(address, []).append(entry)
            try:
                while not (self._holder is None and self._next() is entry):
                    if cancel is not None and cancel.is_set():
                        raise JobCancelled()
                    self._cond.wait(0.2)
            finally:
                self._leave(address, entry)
            self._holder, self._depth = me, 1
            self._grants += 1
            self._served[address] = self._grants
            if len(self._served) > self.MEMORY:
                for old in sorted(self._served, key=self._served.get)[: len(self._served) - self.MEMORY]:
                    del self._served[old]

    def _next(self):
        address = min(self._waiting, key=lambda a: (self._served.get(a, -1), self._waiting[a][0][0]))
        return self._waiting[address][0]

    def _leave(self, address: str, entry) -> None:
        entries = self._waiting[address]
        entries.remove(entry)
        if not entries:
            del self._waiting[address]
        self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            self._depth -= 1
            if self._depth == 0:
                self._holder = None
                self._cond.notify_all()

    def others_waiting(self) -> bool:
        with self._cond:
            return bool(self._waiting)

    def waiting(self) -> dict[str, int]:
        """Waiting jobs per address."""
        with self._cond:
            return {address: len(entries) for address, entries in self._waiting.items()}

    def notify(self) -> None:
        with self._cond:
            self._cond.notify_all()


@dataclass
class Batch:
    """A request that runs several jobs in a row (an A1111 ``n_iter`` call, an extra's upscale):
    its own client id, who asked, and where it stands, for /progress and /interrupt."""

    user: str
    kind: str
    job_count: int = 1
    job_no: int = 0
    interrupted: bool = False
    address: str = "local"
    client: str = field(default_factory=lambda: f"sdapi-{uuid.uuid4().hex[:12]}")
    cancel: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.time)
    timestamp: str = field(default_factory=lambda: _dt.datetime.now().strftime("%Y%m%d%H%M%S"))
    last_image: str | None = None  # base64 of the newest finished image (the progress preview)

    @property
    def caller(self) -> Caller:
        return Caller(client=self.client, user=self.user, address=self.address)


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
        self.turns = Turns()

    # 1. One job ---------------------------------------------------------------------------------
    @contextmanager
    def run(self, client: "Caller | str", on_step=None):
        """Run a job for ``client`` (a Caller, or a client id): yields (cancel event, step hook).
        The stop switch is armed before waiting for the GPU (停止 while waiting takes the job out
        of the line); out of memory becomes ``out_of_memory`` with the failed job's memory freed."""
        caller = as_caller(client)
        client = caller.client
        cancel = self._start(client)
        hook = self._progress.track(client, on_step, user=caller.user)
        out_of_memory = False
        try:
            with self._turn(caller.address, cancel), self.lock:
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

    def give_way(self, address: str) -> None:
        """Inside a long job that ``run`` started (training): when other jobs wait, let them
        all go first, then take the GPU back. The job's address was served last, so everyone
        waiting now is ahead of it. A 停止 meanwhile is seen by the job after it resumes."""
        if not self.turns.others_waiting():
            return
        self.lock.release()
        self.turns.release()
        try:
            time.sleep(0)  # let a waiting thread see the free turn
        finally:
            self.turns.acquire(address)
            self.lock.acquire()

    @contextmanager
    def hold(self, batch: "Batch | None" = None):
        """The GPU for several jobs in a row (an API request's model override and batches); the
        batch waits for its turn like any job, and leaves the line when it is interrupted."""
        address, cancel = (batch.address, batch.cancel) if batch is not None else ("local", None)
        with self._turn(address, cancel), self.lock:
            yield

    @contextmanager
    def _turn(self, address: str, cancel: threading.Event | None):
        self.turns.acquire(address, cancel)
        try:
            yield
        finally:
            self.turns.release()

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
        self.turns.notify()
        return True

    # 2. Batches ---------------------------------------------------------------------------------
    def open_batch(self, user: str, kind: str, job_count: int = 1, address: str = "local") -> Batch:
        batch = Batch(user=user, kind=kind, job_count=job_count, address=address)
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
            self.interrupt_batch(batch)
        return len(batches)

    def interrupt_batch(self, batch: Batch) -> None:
        """Stops one batch: its running job within a step, its waiting ones at once."""
        batch.interrupted = True
        batch.cancel.set()
        self.stop(batch.client)
        self.turns.notify()

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

    def track(self, client: str, on_step=None, user: str = ""):
        """A step hook that records progress for ``client`` (of ``user``), then calls ``on_step``."""
        token = object()

        def hook(step: int, total: int) -> None:
            now = time.time()
            with self._lock:
                state = self._state
                if state is None or state["token"] is not token:
                    state = self._state = {"token": token, "client": client, "user": user, "first": (now, step)}
                state.update(step=step, total=total, updated=now)
            if on_step is not None:
                on_step(step, total)

        return hook

    def finish(self, client: str) -> None:
        with self._lock:
            if self._state is not None and self._state["client"] == client:
                self._state = None

    def snapshot(self) -> dict | None:
        """{client, user, step, total, seconds_per_step} of the running job, or None when idle."""
        with self._lock:
            state = self._state
            if state is None:
                return None
            (t0, s0), step = state["first"], state["step"]
            rate = (state["updated"] - t0) / (step - s0) if step > s0 else None
            return {"client": state["client"], "user": state["user"], "step": step, "total": state["total"],
                    "seconds_per_step": rate}
