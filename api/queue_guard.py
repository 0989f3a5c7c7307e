"""Fair use of the one GPU queue: a per-client cap on jobs, and "busy" answers people can read.

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

The count reads Gradio's queue (``Blocks._queue``: the waiting events of every concurrency
group and the running ones) without changing it; tests/test_load.py fails if that layout moves.
"""

from __future__ import annotations

import json
import logging
import re

from starlette.datastructures import Headers
from starlette.middleware import Middleware

from strings import error_text, load

log = logging.getLogger(__name__)

DEFAULT_CLIENT_LIMIT = 4
JOIN_PATHS = re.compile(r"^/gradio_api/(queue/join|call/(v2/)?[\w.-]+)/?$")


def client_address(scope) -> str:
    return (scope.get("client") or ("unknown", 0))[0]


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


class QueueGuardMiddleware:
    def __init__(self, app, blocks, limit: int = DEFAULT_CLIENT_LIMIT, queue_size: int | None = None,
                 lang: str | None = None) -> None:
        self.app, self.blocks, self.limit, self.queue_size = app, blocks, limit, queue_size
        self.S = load(lang)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not JOIN_PATHS.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        # 1. Per-client cap.
        address = client_address(scope)
        if self.limit > 0:
            count = queued_jobs(self.blocks, address)
            if count >= self.limit:
                log.info("client %s has %d jobs queued: refusing another", address, count)
                await self._answer(send, 429, "client_queue_full", {"count": count, "limit": self.limit})
                return
        # 2. Queue full: Gradio answers 503; re-word it (and keep the page able to show it).
        browser = Headers(scope=scope).get("origin") is not None
        held: dict = {}

        async def watch(message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 503:
                held["start"] = message
                return
            if "start" in held and message["type"] == "http.response.body":
                if message.get("more_body"):
                    return  # drop Gradio's English body; ours follows once it ends
                await self._answer(send, 429 if browser else 503, "queue_full", {"limit": self.queue_size or "?"})
                return
            await send(message)

        await self.app(scope, receive, watch)

    async def _answer(self, send, status: int, code: str, fields: dict) -> None:
        body = json.dumps({"detail": error_text(self.S, code, fields), "error": code}, ensure_ascii=False).encode()
        headers = [(b"content-type", b"application/json; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                   (b"retry-after", b"5")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def queue_guard(blocks, limit: int = DEFAULT_CLIENT_LIMIT, queue_size: int | None = None,
                lang: str | None = None) -> Middleware:
    """The middleware entry for ``app_kwargs["middleware"]``."""
    return Middleware(QueueGuardMiddleware, blocks=blocks, limit=limit, queue_size=queue_size, lang=lang)
