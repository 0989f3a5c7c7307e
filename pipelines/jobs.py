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
from typing import Callable

from .errors import DanqingError, JobCancelled
from .requests import Caller
from .store.devices import free_memory, is_oom

log = logging.getLogger(__name__)


def as_caller(client: "Caller | str") -> Caller:
    return client if isinstance(client, Caller) else Caller(client=client, address=client)


def turn_key(caller: Caller) -> str:
    """Whose turn a job counts for: the user when logged in (one person, whatever tab or
    address), else the address."""
    return f"user:{caller.user}" if caller.user else f"address:{caller.address}"


@dataclass
class Ticket:
    """A job waiting for the GPU: whose (``key``: the user when logged in, else the address),
    which client (its stop switch), what kind, since when."""

    arrival: int
    key: str
    client: str = ""
    user: str = ""
    kind: str = ""
    since: float = field(default_factory=time.time)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def of(cls, caller: Caller, kind: str = "") -> "Ticket":
        return cls(0, turn_key(caller), client=caller.client, user=caller.user, kind=kind)


class Turns:
    """Who gets the GPU next: the oldest waiting job of the key (user, or address without a
    login) served longest ago (a key never served goes first; ties go to the earliest arrival).
    So one user with eight jobs waiting takes turns with another's first one instead of going
    before it. Re-entrant per thread (a batch holds the GPU, its jobs run inside). A waiting job
    whose stop switch is set leaves the line at once (JobCancelled). ``line()`` is the order the
    waiting jobs will go in, for showing each its place."""

    MEMORY = 4096  # keys whose last turn is remembered (the oldest are forgotten)

    def __init__(self, capacity: int = 1) -> None:
        self._cond = threading.Condition()
        self.capacity = capacity  # jobs at once: one per GPU (Ray Serve replicas: one per replica)
        self._holders: dict[int, list] = {}  # thread -> [depth, its ticket], outermost
        self._arrivals = 0
        self._grants = 0
        self._waiting: dict[str, list[Ticket]] = {}  # key -> its tickets, oldest first
        self._served: dict[str, int] = {}  # key -> number of its last turn

    @property
    def running(self) -> Ticket | None:
        """The job holding the GPU (the longest-running one, with several GPUs)."""
        holders = self.running_all()
        return holders[0] if holders else None

    def running_all(self) -> list[Ticket]:
        with self._cond:
            return sorted((t for _, t in self._holders.values()), key=lambda t: t.arrival)

    def set_capacity(self, capacity: int) -> None:
        with self._cond:
            self.capacity = max(1, int(capacity))
            self._cond.notify_all()

    def acquire(self, key: str, cancel: threading.Event | None = None, ticket: Ticket | None = None,
                on_wait: Callable[[int], None] | None = None) -> None:
        """Wait for the GPU. ``on_wait(place)`` is told the job's place in the line (0: next)
        when it changes, and again every second (the estimate moves with the running job)."""
        me = threading.get_ident()
        with self._cond:
            if me in self._holders:
                self._holders[me][0] += 1
                return
            self._arrivals += 1
            ticket = ticket or Ticket(0, key)
            ticket.arrival, ticket.key = self._arrivals, key
            self._waiting.setdefault(key, []).append(ticket)
            place, told = None, 0.0
            try:
                while not (len(self._holders) < self.capacity and self._next() is ticket):
                    if cancel is not None and cancel.is_set():
                        raise JobCancelled()
                    if on_wait is not None:
                        now = self._line().index(ticket)
                        if now != place or time.monotonic() - told >= 1.0:
                            place, told = now, time.monotonic()
                            on_wait(now)
                    self._cond.wait(0.2)
            finally:
                self._leave(key, ticket)
            self._holders[me] = [1, ticket]
            self._grants += 1
            self._served[key] = self._grants
            if len(self._served) > self.MEMORY:
                for old in sorted(self._served, key=self._served.get)[: len(self._served) - self.MEMORY]:
                    del self._served[old]

    def _pick(self, waiting: dict[str, list[Ticket]], served: dict[str, int]) -> Ticket:
        key = min(waiting, key=lambda k: (served.get(k, -1), waiting[k][0].arrival))
        return waiting[key][0]

    def _next(self) -> Ticket:
        return self._pick(self._waiting, self._served)

    def _line(self) -> list[Ticket]:
        """The waiting tickets in the order they will be served (if no one else arrives)."""
        waiting = {k: list(v) for k, v in self._waiting.items()}
        served, grants, order = dict(self._served), self._grants, []
        while waiting:
            ticket = self._pick(waiting, served)
            order.append(ticket)
            grants += 1
            served[ticket.key] = grants
            waiting[ticket.key].pop(0)
            if not waiting[ticket.key]:
                del waiting[ticket.key]
        return order

    def line(self) -> list[Ticket]:
        with self._cond:
            return self._line()

    def _leave(self, key: str, ticket: Ticket) -> None:
        tickets = self._waiting[key]
        tickets.remove(ticket)
        if not tickets:
            del self._waiting[key]
        self._cond.notify_all()

    def release(self) -> None:
        me = threading.get_ident()
        with self._cond:
            entry = self._holders[me]
            entry[0] -= 1
            if entry[0] == 0:
                del self._holders[me]
                self._cond.notify_all()

    def others_waiting(self) -> bool:
        with self._cond:
            return bool(self._waiting)

    def waiting(self) -> dict[str, int]:
        """Waiting jobs per key."""
        with self._cond:
            return {key: len(tickets) for key, tickets in self._waiting.items()}

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

    def __init__(self, lock, device, capacity: int = 1) -> None:
        self.lock = lock
        self.device = device
        self._guard = threading.Lock()
        self._running: dict[str, threading.Event] = {}
        self._outer: dict[threading.Event, threading.Event] = {}  # a job's switch -> its hold's
        self._batches: dict[str, Batch] = {}
        self._progress = Progress()
        self.turns = Turns(capacity)
        self._seconds: float | None = None  # a moving average of how long a job holds the GPU
        # Told of every job that had the GPU: (user, kind, seconds, "ok" | "cancelled" | "failed").
        self.on_finished: Callable[[str, str, float, str], None] | None = None
        # Told of every job from when it is accepted until it ends (.opened(ticket), .closed(ticket)):
        # the jobs still open when the process died are the ones its users are told did not finish.
        self.journal = None

    # 1. One job ---------------------------------------------------------------------------------
    @contextmanager
    def run(self, client: "Caller | str", on_step=None, kind: str = "", on_wait=None):
        """Run a job for ``client`` (a Caller, or a client id): yields (cancel event, step hook).
        The stop switch is armed before waiting for the GPU (停止 while waiting takes the job out
        of the line); ``on_wait(place, seconds)`` hears the job's place in the line (0: next) and
        the estimated wait while it waits, then ``on_wait(None, None)`` once the GPU is the
        job's after a wait (a stop meanwhile still cancels it before it starts); out of memory
        becomes ``out_of_memory`` with the failed job's memory freed."""
        caller = as_caller(client)
        client = caller.client
        cancel = self._start(client)
        hook = self._progress.track(client, on_step, user=caller.user)
        ticket = Ticket.of(caller, kind)
        waited: list[int] = []

        def told(place: int) -> None:
            waited.append(place)
            on_wait(place, self.estimate(place))

        out_of_memory = False
        self._journal("opened", ticket)
        try:
            with self._turn(ticket, cancel, told if on_wait is not None else None), self.lock, self._timed(ticket):
                if on_wait is not None and waited:
                    on_wait(None, None)  # its turn after a wait: the caller may check it is still wanted
                if cancel.is_set():
                    raise JobCancelled()
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
            self._journal("closed", ticket)
        if out_of_memory:
            # Raised outside the except block, so the collection runs with the frames cleared.
            free_memory(self.device)
            raise DanqingError("out_of_memory")

    def give_way(self, caller: Caller, kind: str = "") -> bool:
        """Inside a long job that ``run`` or ``hold`` started (training, an A1111 request's
        batches): when other jobs wait, let them all go first, then take the GPU back. The
        job's key was served last, so everyone waiting now is ahead of it. Returns whether it
        gave way; a 停止 meanwhile is seen by the job after it resumes."""
        if not self.turns.others_waiting():
            return False
        self.lock.release()
        self.turns.release()
        try:
            time.sleep(0)  # let a waiting thread see the free turn
        finally:
            ticket = Ticket.of(caller, kind)
            self.turns.acquire(ticket.key, ticket=ticket)
            self.lock.acquire()
        return True

    @contextmanager
    def hold(self, batch: "Batch | None" = None, caller: Caller | None = None, kind: str = ""):
        """The GPU for several jobs in a row (an API request's model override and batches, a
        grid's cells on one model); the batch (or ``caller``) waits for its turn like any job,
        and leaves the line when it is interrupted (a caller: by its 停止). Yields the cancel
        event: the jobs run inside see a 停止 given between them."""
        if batch is not None:
            ticket, cancel = Ticket.of(batch.caller, batch.kind), batch.cancel
        else:
            caller = caller or as_caller("local")
            ticket, cancel = Ticket.of(caller, kind), self._start(caller.client)
        try:
            with self._turn(ticket, cancel), self.lock:
                if cancel.is_set():
                    raise JobCancelled()
                yield cancel
        finally:
            if batch is None:
                self._finish(caller.client, cancel)

    @contextmanager
    def _turn(self, ticket: Ticket, cancel: threading.Event | None, on_wait=None):
        self.turns.acquire(ticket.key, cancel, ticket, on_wait)
        try:
            yield
        finally:
            self.turns.release()

    @contextmanager
    def _timed(self, ticket: Ticket):
        """How long the job held the GPU, into the moving average the waits are estimated by,
        and to ``on_finished`` (the usage log) with how it ended."""
        started = time.monotonic()
        outcome = "failed"
        try:
            yield
            outcome = "ok"
        except JobCancelled:
            outcome = "cancelled"
            raise
        finally:
            seconds = time.monotonic() - started
            with self._guard:
                self._seconds = seconds if self._seconds is None else 0.7 * self._seconds + 0.3 * seconds
            if self.on_finished is not None:
                try:
                    self.on_finished(ticket.user, ticket.kind, seconds, outcome)
                except Exception:  # the log never costs a user their job
                    log.exception("recording a job's usage failed")

    def _journal(self, event: str, ticket: Ticket) -> None:
        if self.journal is None:
            return
        try:
            getattr(self.journal, event)(ticket)
        except Exception:  # the journal never costs a user their job
            log.exception("the job journal failed")

    # 2. The line --------------------------------------------------------------------------------
    def estimate(self, place: int) -> float | None:
        """Seconds until the job at ``place`` (0: next) starts: what the running job nearest its
        end has left, plus one average job for each round of jobs ahead (one job per GPU at a
        time); None before any job has run."""
        with self._guard:
            average = self._seconds
        lefts = [max(0.0, (s["total"] - s["step"]) * s["seconds_per_step"])
                 for s in self._progress.snapshots() if s.get("seconds_per_step")]
        left = min(lefts) if lefts else None
        if average is None:
            return left
        running = self.turns.running is not None
        rounds = place // max(1, self.turns.capacity)
        return (left if left is not None else (average / 2 if running else 0.0)) + rounds * average

    def queue(self) -> list[dict]:
        """The running jobs and the waiting ones in the order they will go: client, user, kind,
        state, place (0: next), seconds waited, estimated seconds until it starts."""
        now = time.time()
        rows = []
        for running in self.turns.running_all():
            snapshot = self._progress.snapshot(running.client) or {}
            rows.append({"client": running.client, "key": running.key, "user": running.user, "kind": running.kind,
                         "state": "running", "place": None, "waited": None, "eta": None,
                         "step": snapshot.get("step"), "total": snapshot.get("total")})
        for place, ticket in enumerate(self.turns.line()):
            eta = self.estimate(place)
            rows.append({"client": ticket.client, "key": ticket.key, "user": ticket.user, "kind": ticket.kind,
                         "state": "waiting",
                         "place": place, "waited": round(now - ticket.since, 1),
                         "eta": round(eta, 1) if eta is not None else None})
        return rows

    def _start(self, client: str) -> threading.Event:
        """The stop switch of a job of ``client``. Inside a hold of the same client (a grid's
        cells) the hold's switch stays underneath: a 停止 already given carries over, and the
        hold's switch is armed again when the job ends."""
        event = threading.Event()
        with self._guard:
            outer = self._running.get(client)
            if outer is not None and outer.is_set():
                event.set()
            self._running[client] = event
            if outer is not None:
                self._outer[event] = outer
        return event

    def _finish(self, client: str, event: threading.Event) -> None:
        with self._guard:
            outer = self._outer.pop(event, None)
            if self._running.get(client) is event:
                if outer is not None:
                    if event.is_set():
                        outer.set()
                    self._running[client] = outer
                else:
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

    # 3. Batches ---------------------------------------------------------------------------------
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
        """Stops ``user``'s batches (running or waiting) and, for a logged-in user, every other
        job of theirs, running or waiting (a page's generation, a training run): A1111's
        /interrupt for that user. Returns how many were stopped."""
        batches = self.batches_of(user)
        for batch in batches:
            self.interrupt_batch(batch)
        if not user:  # without logins "" is everyone: only the API's own batches
            return len(batches)
        clients = {b.client for b in batches}
        others = [t.client for t in (*self.turns.running_all(), *self.turns.line())
                  if t.user == user and t.client not in clients]
        return len(batches) + sum(self.stop(client) for client in dict.fromkeys(others))

    @contextmanager
    def armed(self, client: str):
        """``client``'s stop switch, armed for a while outside any job (a training run waiting
        for its turn between slices): 停止 sets it, and the jobs run inside see it."""
        event = self._start(client)
        try:
            yield event
        finally:
            self._finish(client, event)

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
    """What the jobs on the GPUs are doing (client, step, total, seconds per step), for the
    API's progress route and the queue's estimates. Fed by each job's step hook; read at any
    time without waiting for the GPU lock. One GPU runs one job at a time; with several
    (Ray Serve replicas) each running job has its own entry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, dict] = {}  # client -> its job's state

    def track(self, client: str, on_step=None, user: str = ""):
        """A step hook that records progress for ``client`` (of ``user``), then calls ``on_step``."""
        token = object()

        def hook(step: int, total: int) -> None:
            now = time.time()
            with self._lock:
                state = self._states.get(client)
                if state is None or state["token"] is not token:
                    state = self._states[client] = {"token": token, "client": client, "user": user,
                                                    "first": (now, step)}
                state.update(step=step, total=total, updated=now)
            if on_step is not None:
                on_step(step, total)

        return hook

    def finish(self, client: str) -> None:
        with self._lock:
            self._states.pop(client, None)

    @staticmethod
    def _view(state: dict) -> dict:
        (t0, s0), step = state["first"], state["step"]
        rate = (state["updated"] - t0) / (step - s0) if step > s0 else None
        return {"client": state["client"], "user": state["user"], "step": step, "total": state["total"],
                "seconds_per_step": rate}

    def snapshots(self) -> list[dict]:
        with self._lock:
            return [self._view(s) for s in self._states.values()]

    def snapshot(self, client: str | None = None) -> dict | None:
        """{client, user, step, total, seconds_per_step} of ``client``'s job (None: the job
        updated last), or None when there is none."""
        with self._lock:
            if client is not None:
                state = self._states.get(client)
            else:
                state = max(self._states.values(), key=lambda s: s["updated"], default=None)
            return self._view(state) if state is not None else None
