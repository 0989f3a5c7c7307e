"""Request guards in front of every route (Gradio's UI and queue, ``/sdapi``): one ASGI middleware.

Why: a studio started with ``--listen`` is reachable from a whole LAN, where two attacks are
cheap and Gradio 6 leaves them open:

1. Cross-site requests. Any web page a colleague opens can make their browser POST to
   ``http://192.168.x.y:7860/gradio_api/...`` (a "simple" request needs no CORS preflight);
   Gradio's own CORS check only protects a server bound to localhost. A browser always sends
   ``Origin`` on such requests, so one whose origin is not this server's own address (the
   ``Host`` header, or ``X-Forwarded-Host`` behind a proxy) is answered 403. Requests without
   ``Origin`` (gradio_client, curl, A1111 clients) are not browser cross-site requests and pass.
2. Password guessing. After ``MAX_LOGIN_FAILURES`` failed logins from one address within
   ``window`` seconds (Gradio's ``POST /login`` answered 400/401, or HTTP Basic credentials
   answered 401), further login attempts from that address are answered 429 until the oldest
   failure is older than the window. A successful login clears the address's record.

Registered through ``demo.launch(app_kwargs={"middleware": [...]})`` (Gradio's App is a FastAPI
subclass, so no library internals are touched).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware import Middleware

from strings import error_text, load

log = logging.getLogger(__name__)

MAX_LOGIN_FAILURES = 5
DEFAULT_LOGIN_WINDOW = 60.0
LOGIN_PATHS = ("/login", "/login/")
_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


def _authority(host: str, scheme: str = "http") -> str:
    """``host[:port]`` lower-cased, with the scheme's default port dropped."""
    host = host.strip().lower()
    default = _DEFAULT_PORTS.get(scheme, "")
    if default and host.endswith(":" + default) and not host.endswith("]"):
        host = host[: -len(default) - 1]
    return host


def same_origin(origin: str, headers: Headers, scheme: str) -> bool:
    """True when ``origin`` names this server as the client reached it."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False  # "null" (sandboxed frames, file://) and anything malformed
    wanted = _authority(parts.netloc, parts.scheme)
    hosts = [headers.get("host", "")]
    hosts += [h for h in headers.get("x-forwarded-host", "").split(",") if h.strip()]
    proto = headers.get("x-forwarded-proto", scheme).split(",")[0].strip() or scheme
    return any(_authority(h, s) == wanted for h in hosts if h for s in {scheme, proto, parts.scheme})


class LoginThrottle:
    """Failed-login timestamps per client address (a sliding window), thread-safe."""

    def __init__(self, limit: int = MAX_LOGIN_FAILURES, window: float = DEFAULT_LOGIN_WINDOW) -> None:
        self.limit, self.window = limit, window
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, client: str, now: float | None = None) -> float:
        """Seconds until ``client`` may try again; 0 when it is not locked out."""
        now = time.monotonic() if now is None else now
        with self._lock:
            failures = self._failures.get(client)
            if not failures:
                return 0.0
            while failures and failures[0] <= now - self.window:
                failures.popleft()
            if not failures:
                del self._failures[client]
                return 0.0
            return failures[0] + self.window - now if len(failures) >= self.limit else 0.0

    def failed(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            failures = self._failures.setdefault(client, deque())
            failures.append(now)
            while len(failures) > self.limit:
                failures.popleft()
            if len(failures) == self.limit:
                log.warning("login: %d failures from %s, refusing its logins for a while", self.limit, client)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)


class SecurityMiddleware:
    """Pure ASGI middleware: the cross-site check, then the login throttle (see module doc)."""

    def __init__(self, app, lang: str | None = None, login_window: float = DEFAULT_LOGIN_WINDOW,
                 login_limit: int = MAX_LOGIN_FAILURES) -> None:
        self.app = app
        self.S = load(lang)
        self.throttle = LoginThrottle(login_limit, login_window)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        # 1. Cross-site: a browser request from another site's page.
        origin = headers.get("origin")
        if origin is not None and not same_origin(origin, headers, scope.get("scheme", "http").replace("ws", "http")):
            log.warning("refused a cross-site %s %s from origin %r", scope.get("method", "WS"), scope["path"], origin[:100])
            await self._refuse(scope, receive, send, 403, error_text(self.S, "cross_site_refused"))
            return
        # 2. Login attempts: Gradio's login form, or HTTP Basic credentials (the /sdapi routes).
        is_form = scope["type"] == "http" and scope.get("method") == "POST" and scope["path"] in LOGIN_PATHS
        is_basic = headers.get("authorization", "").lower().startswith("basic ")
        if not (is_form or is_basic):
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("unknown", 0))[0]
        wait = self.throttle.retry_after(client)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            await self._refuse(scope, receive, send, 429, error_text(self.S, "login_throttled", {"seconds": seconds}),
                               {"retry-after": str(seconds)})
            return
        failures = (400, 401) if is_form else (401,)

        async def watch(message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                if status in failures:
                    self.throttle.failed(client)
                elif 200 <= status < 300:
                    self.throttle.succeeded(client)
            await send(message)

        await self.app(scope, receive, watch)

    @staticmethod
    async def _refuse(scope, receive, send, status: int, detail: str, extra: dict | None = None) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"detail": detail}, ensure_ascii=False).encode("utf-8")
        headers = [(b"content-type", b"application/json; charset=utf-8"), (b"content-length", str(len(body)).encode())]
        headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def security_middleware(lang: str | None = None, login_window: float = DEFAULT_LOGIN_WINDOW) -> Middleware:
    """The middleware entry for ``app_kwargs["middleware"]``."""
    return Middleware(SecurityMiddleware, lang=lang, login_window=login_window)
