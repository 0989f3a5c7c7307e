"""Fair use of the one GPU queue: a per-client cap on jobs whatever route they come by, jobs
stopped when their caller goes away, and "busy" answers people can read.

Why: Gradio's ``queue(max_size=N)`` bounds the queue as a whole, so one API client (or one
person with many tabs) can fill all N places and everybody else is told "busy". And when the
queue is full, Gradio's page shows a fixed English sentence whatever the server says.

1. Per-client cap. Before Gradio accepts a job (``POST /gradio_api/queue/join`` from the page,
   ``POST /gradio_api/call/...`` from REST clients), the jobs this client already has waiting or
   running are counted; at ``limit`` the new one is answered 429 with a Chinese message (and
   ``"error": "client_queue_full"``). A client is its address as the server sees it: behind a
   reverse proxy, let uvicorn read ``X-Forwarded-For`` (``FORWARDED_ALLOW_IPS``; app.py sets it
   on a HuggingFace Space, where only HF's proxy can reach the app).
2. Queue full. Gradio's 503 keeps its status for API clients (``gradio_client`` reports it as
   "Queue is full"), with a Chinese ``detail`` and ``"error": "queue_full"``. For the page (a
   request with ``Origin``: browsers send it on every POST), it becomes 429: Gradio's front end
   replaces any 503's text with its own English sentence, but shows the ``detail`` of a 429.
3. Jobs outside Gradio's queue: the A1111 routes (``/sdapi/v1/txt2img``, ...) and direct
   ``/gradio_api/run/...`` calls. They are counted here while they wait or run, so the same cap
   and the same queue size hold for them. Every job then takes turns at the GPU in the studio's
   line (pipelines/jobs.py ``Turns``: round-robin between users): the GPU queue has no Gradio
   limit, so "waiting in all" is counted here — every accepted job but the running one. When
   such a caller disconnects, whatever its route registered with ``on_disconnect`` runs (the A1111 routes stop their batch; the UI events their job).

The count reads Gradio's queue (``Blocks._queue``: the waiting events of every concurrency
group and the running ones) without changing it; tests/test_load.py fails if that layout moves.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import contextmanager
import logging
import re
import threading
import uuid
from collections import Counter

from starlette.datastructures import Headers
from starlette.middleware import Middleware

from extensions import GPU_CONCURRENCY_ID
from pipelines.requests import CALL_KEY
from strings import error_text, load

from .bodies import UPLOAD_BYTES, read_body, replay

log = logging.getLogger(__name__)

DEFAULT_CLIENT_LIMIT = 4
JOIN_PATHS = re.compile(r"^/gradio_api/(queue/join|call/(v2/)?[\w.-]+)/?$")
DIRECT_PATHS = re.compile(r"^(/gradio_api/run/[\w.-]+|/sdapi/v1/(txt2img|img2img|extra-single-image|extra-batch-images)"
                          r"|/controlnet/detect)/?$")
DISCONNECT_KEY = "danqing_on_disconnect"


def on_disconnect(scope_or_state, callback) -> bool:
    """Run ``callback()`` (on the event loop) when this request's caller goes away; at once if it
    already has. False when the request is not watched (not a direct job route)."""
    state = scope_or_state.get("state", {}) if isinstance(scope_or_state, dict) else scope_or_state
    register = state.get(DISCONNECT_KEY) if isinstance(state, dict) else getattr(state, DISCONNECT_KEY, None)
    if register is None:
        return False
    register(callback)
    return True


class _Watch:
    """The caller's disconnect, noticed while the route works (after it has read the body)."""

    def __init__(self, receive) -> None:
        self.receive = receive
        self.gone = asyncio.Event()
        self.callbacks: list = []
        self._guard = threading.Lock()
        self.task: asyncio.Task | None = None
        self.loop = asyncio.get_running_loop()

    def register(self, callback) -> None:
        with self._guard:
            if not self.gone.is_set():
                self.callbacks.append(callback)
                return
        self.loop.call_soon_threadsafe(callback)

    async def app_receive(self):
        if self.task is None:
            message = await self.receive()
            if message["type"] == "http.request" and not message.get("more_body"):
                self.task = asyncio.create_task(self._wait())
            return message
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def _wait(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        with self._guard:
            self.gone.set()
            callbacks, self.callbacks = self.callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("stopping a job whose caller went away failed")

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()


def client_address(scope) -> str:
    return (scope.get("client") or ("unknown", 0))[0]


def waiting_jobs(blocks) -> int:
    """Jobs waiting in Gradio's queue (every concurrency group), not counting running ones."""
    queue = blocks._queue
    return sum(len(group.queue) for group in list(queue.event_queue_per_concurrency_id.values()))


def started_gpu_jobs(blocks) -> int:
    """Jobs of the GPU queue that Gradio has started: with no Gradio limit on that queue, each is
    running or waiting in the studio's line."""
    return sum(1 for job in list(blocks._queue.active_jobs) for event in job or ()
               if getattr(getattr(event, "fn", None), "concurrency_id", None) == GPU_CONCURRENCY_ID)


def queued_jobs(blocks, address: str) -> int:
    """Jobs from ``address`` that Gradio's queue holds: waiting (any group) or running."""
    queue = blocks._queue
    events = [event for group in list(queue.event_queue_per_concurrency_id.values()) for event in list(group.queue)]
    events += [event for job in list(queue.active_jobs) if job for event in job]
    count = 0
    for event in events:
        client = getattr(event.request, "client", None)
        if client is not None and client.host == address:
            count += 1
    return count


class Admission:
    """The one count of accepted jobs, whatever route they came by, and the one ``admit``: a
    client's jobs (waiting or running) against its cap, every accepted job but the running one
    against the queue size. An accepted job is, at any moment, in exactly one of: a join let
    through that Gradio has not answered yet (``joining``), Gradio's queue (read, never
    changed: its waiting events, and the started GPU jobs waiting in the studio's line), a
    direct call being served (``direct``). The middleware below only turns a refusal into 429/503."""

    def __init__(self, blocks, limit: int = DEFAULT_CLIENT_LIMIT, queue_size: int | None = None) -> None:
        self.blocks, self.limit, self.queue_size = blocks, limit, queue_size
        self.direct: Counter[str] = Counter()  # direct calls being served, per address
        # Joins let through that Gradio has not put in its queue yet (until its answer starts):
        # several arriving within the same milliseconds each count the others.
        self.joining: Counter[str] = Counter()

    def jobs_of(self, address: str) -> int:
        return queued_jobs(self.blocks, address) + self.direct[address] + self.joining[address]

    def waiting(self) -> int:
        """Jobs waiting in all: every accepted one but the one running."""
        accepted = (waiting_jobs(self.blocks) + started_gpu_jobs(self.blocks) + sum(self.direct.values())
                    + sum(self.joining.values()))
        return max(0, accepted - 1)

    def admit(self, address: str) -> tuple[str, dict] | None:
        """None when a new job of ``address`` may come in; else (refusal code, its fields)."""
        if self.limit > 0:
            count = self.jobs_of(address)
            if count >= self.limit:
                log.info("client %s has %d jobs queued: refusing another", address, count)
                return "client_queue_full", {"count": count, "limit": self.limit}
        if self.queue_size and self.waiting() >= self.queue_size:
            return "queue_full", {"limit": self.queue_size}
        return None

    @contextmanager
    def holding(self, address: str, route: str):
        """Count an admitted job of ``address`` while it is ``route``: "joining" (until Gradio
        answers its join) or "direct" (while the call is served)."""
        counter = self.joining if route == "joining" else self.direct
        counter[address] += 1
        released = []

        def release() -> None:
            if not released:
                released.append(True)
                counter[address] -= 1
                if counter[address] <= 0:
                    del counter[address]

        try:
            yield release
        finally:
            release()


class QueueGuardMiddleware:
    def __init__(self, app, blocks, limit: int = DEFAULT_CLIENT_LIMIT, queue_size: int | None = None,
                 lang: str | None = None, stop=None) -> None:
        self.app, self.blocks = app, blocks
        self.admission = Admission(blocks, limit, queue_size)
        self.stop = stop  # studio.stop(client): pulls a direct call's stop switch when its caller leaves
        self.S = load(lang)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        if DIRECT_PATHS.match(scope["path"]) or JOIN_PATHS.match(scope["path"]):
            receive = await self._with_defaults(scope, receive)
        if DIRECT_PATHS.match(scope["path"]):
            receive, is_job = await self._is_gpu_job(scope, receive)
            if is_job:
                await self._direct(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        if not JOIN_PATHS.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        # 1. Admission: the client's cap and the queue size, counted over every route. For the
        #    page (a request with Origin) "queue full" is a 429: Gradio's front end replaces a
        #    503's text with its own English sentence, but shows a 429's detail.
        address = client_address(scope)
        browser = Headers(scope=scope).get("origin") is not None
        refused = self.admission.admit(address)
        if refused is not None:
            code, fields = refused
            await self._answer(send, 429 if browser or code == "client_queue_full" else 503, code, fields)
            return
        held: dict = {}
        with self.admission.holding(address, "joining") as joined:

            async def watch(message) -> None:
                if message["type"] == "http.response.start":
                    joined()  # Gradio has queued the job (or refused it): its own count has it now
                    if message["status"] == 503:
                        held["start"] = message
                        return
                if "start" in held and message["type"] == "http.response.body":
                    if message.get("more_body"):
                        return  # drop Gradio's English body; ours follows once it ends
                    await self._answer(send, 429 if browser else 503, "queue_full",
                                       {"limit": self.admission.queue_size or "?"})
                    return
                await send(message)

            await self.app(scope, receive, watch)

    async def _direct(self, scope, receive, send) -> None:
        """A job outside Gradio's queue: the same admission, counted while it runs, stopped when
        its caller goes away."""
        address = client_address(scope)
        refused = self.admission.admit(address)
        if refused is not None:
            code, fields = refused
            await self._answer(send, 429 if code == "client_queue_full" else 503, code, fields)
            return
        watch = _Watch(receive)
        state = scope.setdefault("state", {})
        state[DISCONNECT_KEY] = watch.register
        if self.stop is not None:  # a UI event called directly: its job's stop switch is this call's
            call = state[CALL_KEY] = f"call-{uuid.uuid4().hex[:12]}"
            watch.register(lambda: self.stop(call))
        with self.admission.holding(address, "direct"):
            try:
                await self.app(scope, watch.app_receive, send)
            finally:
                watch.close()

    def _defaults(self) -> dict:
        """fn id -> (its api_name, the API's default of each input, None where it has none)."""
        if self.__dict__.get("_defaults_of") is None:
            info = self.blocks.get_api_info().get("named_endpoints", {})
            table = {}
            for fn in self.blocks.fns.values():
                endpoint = info.get(f"/{fn.api_name}") if fn.api_name else None
                if endpoint is not None and len(endpoint["parameters"]) == len(fn.inputs):
                    table[fn._id] = (fn.api_name, [(p["parameter_default"],) if p.get("parameter_has_default") else None
                                                   for p in endpoint["parameters"]])
            self._defaults_of = table
        return self._defaults_of

    async def _with_defaults(self, scope, receive):
        """A positional call written for an endpoint's published order keeps working when
        parameters are added at its end (ui/endpoints.py): its missing trailing values get the
        API's defaults, as gradio_client fills them. Anything else passes as it came."""
        body = await read_body(receive, UPLOAD_BYTES)
        try:
            payload = json.loads(body or b"null")
        except ValueError:
            return replay(body, receive)
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            return replay(body, receive)
        name = scope["path"].rstrip("/").rsplit("/", 1)[-1]
        table = self._defaults()
        if "fn_index" in payload:
            entry = table.get(payload["fn_index"])
        else:
            entry = next((e for e in table.values() if e[0] == name), None)
        if entry is None or len(data) >= len(entry[1]):
            return replay(body, receive)
        missing = entry[1][len(data):]
        if any(default is None for default in missing):
            return replay(body, receive)  # Gradio says what is missing
        payload["data"] = data + [default[0] for default in missing]
        padded = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"] + \
            [(b"content-length", str(len(padded)).encode())]
        return replay(padded, receive)

    async def _is_gpu_job(self, scope, receive):
        """(receive, whether this direct call runs a GPU job). The A1111 job routes always do; a
        ``/gradio_api/run/<name>`` call only when the event it names (by api_name, or by
        ``fn_index`` for ``run/predict``) is on the GPU queue: the page's quick events
        (loading lists, 停止) are not counted. The body was read whole at the edge."""
        name = scope["path"].rstrip("/").rsplit("/", 1)[-1]
        if not scope["path"].startswith("/gradio_api/run/"):
            return receive, True
        body = await read_body(receive, UPLOAD_BYTES)
        fns = list(self.blocks.fns.values())
        if name == "predict":
            try:
                index = json.loads(body or b"{}").get("fn_index")
            except (ValueError, AttributeError):
                index = None
            targets = [fn for fn in fns if getattr(fn, "_id", None) == index]
        else:
            targets = [fn for fn in fns if fn.api_name == name]
        is_job = any(fn.concurrency_id == GPU_CONCURRENCY_ID for fn in targets)
        return replay(body, receive), is_job

    async def _answer(self, send, status: int, code: str, fields: dict) -> None:
        body = json.dumps({"detail": error_text(self.S, code, fields), "error": code}, ensure_ascii=False).encode()
        headers = [(b"content-type", b"application/json; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                   (b"retry-after", b"5")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def queue_guard(blocks, limit: int = DEFAULT_CLIENT_LIMIT, queue_size: int | None = None,
                lang: str | None = None, stop=None) -> Middleware:
    """The middleware entry for ``app_kwargs["middleware"]``."""
    return Middleware(QueueGuardMiddleware, blocks=blocks, limit=limit, queue_size=queue_size, lang=lang, stop=stop)
