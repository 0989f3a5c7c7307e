"""The edge: every request to the server (Gradio's page, queue and files, the Gradio API, the
A1111 routes) passes here first, as one pure ASGI middleware, in this order:

1. Who is calling: the peer address, or behind a configured proxy the address it reports
   (api/addresses.py); written back into the request, so every later count uses it.
2. Which name was asked for: a ``Host`` this server does not answer to is refused (DNS
   rebinding; api/addresses.py).
3. Cross-site requests. Any web page a colleague opens can make their browser POST to
   ``http://192.168.x.y:7860/gradio_api/...`` (a "simple" request needs no CORS preflight);
   Gradio's own CORS check only protects a server bound to localhost. A browser always sends
   ``Origin`` on such requests, so one whose origin is not this server's own address is answered
   403. Requests without ``Origin`` (gradio_client, curl, A1111 clients) pass.
4. Who is logged in (with ``--auth``; api/accounts.py): Gradio's session cookie, or HTTP Basic
   credentials, checked here (off the event loop, and remembered for a minute by a hash of the
   header, so scrypt runs once a minute per client, not per request). A request that carries a
   body, or asks for an A1111 route, and is not logged in is answered 401 before a byte of its
   body is read. Password guessing: after ``MAX_LOGIN_FAILURES`` failed logins for one name from
   one address within ``window`` seconds (the login form answered 400/401, or Basic credentials
   refused), that name's logins from that address are answered 429 until the oldest failure
   leaves the window (and after ``MAX_ADDRESS_FAILURES`` over all names, every login from the
   address). A success clears only its own name's record.
5. Whose files: a saved image in another user's outputs folder is answered 404, as if absent.
6. The body: read here, at most ``limit_for(path)`` bytes whatever ``Content-Length`` says
   (chunked too), and a JSON body checked before any route parses it (api/bodies.py).
   A job's inputs that name a file (Gradio takes any path under outputs/, a static folder)
   are checked like the file route: another user's picture, mask or caption is a 404.
7. Framing: ``Content-Security-Policy: frame-ancestors`` (and ``X-Frame-Options``) on every
   answer, so no other site can frame the studio (on a Space: huggingface.co may).

Registered through ``demo.launch(app_kwargs={"middleware": [...]})`` (Gradio's App is a FastAPI
subclass, so no library internals are touched).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable
from email import policy as email_policy
from email.parser import BytesParser
from urllib.parse import parse_qs, unquote, urlsplit

from starlette.concurrency import run_in_threadpool

from starlette.datastructures import Headers
from starlette.middleware import Middleware

from strings import error_text, load

from .accounts import USER_KEY, Accounts
from .addresses import Addresses
from .bodies import BODY_METHODS, DRAIN_BYTES, MIB, BodyTooLarge, is_json, json_problem, limit_for, read_body, replay

log = logging.getLogger(__name__)

MAX_LOGIN_FAILURES = 5  # per (address, name)
MAX_ADDRESS_FAILURES = 20  # per address, over all names
DEFAULT_LOGIN_WINDOW = 60.0
CREDENTIALS_TTL = 60.0  # seconds a checked Basic header is believed without another scrypt
LOGIN_PATHS = ("/login", "/login/")
API_PREFIXES = ("/sdapi/", "/controlnet/", "/danqing/", "/docs", "/openapi.json")
FILE_ROUTE = "/gradio_api/file="
# Routes whose JSON bodies carry a job's inputs (Gradio's queue, its direct and REST API calls).
JOB_ROUTES = ("/gradio_api/queue/join", "/gradio_api/run/", "/gradio_api/api/", "/gradio_api/call/",
              "/gradio_api/component_server")
MAX_INPUT_PATHS = 512
BASIC_CHALLENGE = {"www-authenticate": 'Basic realm="Danqing", charset="UTF-8"'}
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
    """Failed logins (a sliding window), thread-safe, counted per (address, name): guesses at one
    account from one address are refused after ``limit`` failures, and a success clears only
    that pair's record (a teammate logging in as themselves between guesses at the
    administrator's password clears nothing of the administrator's). An address guessing at
    many names is refused after ``spread`` failures over all of them."""

    def __init__(self, limit: int = MAX_LOGIN_FAILURES, window: float = DEFAULT_LOGIN_WINDOW,
                 spread: int = MAX_ADDRESS_FAILURES) -> None:
        self.limit, self.window, self.spread = limit, window, spread
        self._lock = threading.Lock()
        self._failures: dict[tuple, deque[float]] = {}

    def _wait(self, key: tuple, limit: int, now: float) -> float:
        failures = self._failures.get(key)
        if not failures:
            return 0.0
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return 0.0
        return failures[0] + self.window - now if len(failures) >= limit else 0.0

    def retry_after(self, client: str, name: str = "", now: float | None = None) -> float:
        """Seconds until ``client`` may try ``name`` again; 0 when it is not locked out."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return max(self._wait((client, name), self.limit, now), self._wait((client,), self.spread, now))

    def failed(self, client: str, name: str = "", now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            for key, limit in (((client, name), self.limit), ((client,), self.spread)):
                failures = self._failures.setdefault(key, deque())
                failures.append(now)
                while len(failures) > limit:
                    failures.popleft()
                if len(failures) == limit:
                    log.warning("login: %d failures from %s%s, refusing for a while", limit, client,
                                f" for {name!r}" if len(key) == 2 else " (all names)")

    def succeeded(self, client: str, name: str = "") -> None:
        with self._lock:
            self._failures.pop((client, name), None)


class VerifiedCredentials:
    """Basic credentials checked a moment ago (``ttl`` seconds), by a hash of the header: a
    client polling with the same header costs one scrypt a minute, not one per request."""

    def __init__(self, ttl: float = CREDENTIALS_TTL, size: int = 1024) -> None:
        self.ttl, self.size = ttl, size
        self._lock = threading.Lock()
        self._users: dict[bytes, tuple[str, float]] = {}

    @staticmethod
    def _key(header: str) -> bytes:
        return hashlib.sha256(header.encode("utf-8", "surrogatepass")).digest()

    def get(self, header: str) -> str | None:
        key = self._key(header)
        with self._lock:
            found = self._users.get(key)
            if found is None or found[1] < time.monotonic():
                self._users.pop(key, None)
                return None
            return found[0]

    def put(self, header: str, user: str) -> None:
        with self._lock:
            if len(self._users) >= self.size:
                now = time.monotonic()
                self._users = {k: v for k, v in self._users.items() if v[1] >= now}
                while len(self._users) >= self.size:
                    self._users.pop(next(iter(self._users)))
            self._users[self._key(header)] = (user, time.monotonic() + self.ttl)


def basic_name(header: str) -> str:
    """The user name an ``Authorization: Basic`` header claims (not checked), for counting."""
    try:
        decoded = base64.b64decode(header.partition(" ")[2].strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return ""
    return decoded.partition(":")[0][:100]


def form_name(body: bytes, content_type: str = "") -> str:
    """The ``username`` of the login form: multipart (Gradio's page and client post FormData)
    or URL-encoded."""
    try:
        if content_type.lower().startswith("multipart/form-data"):
            message = BytesParser(policy=email_policy.HTTP).parsebytes(
                b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
            for part in message.iter_parts():
                if part.get_param("name", header="content-disposition") == "username":
                    return (part.get_payload(decode=True) or b"").decode("utf-8").strip()[:100]
            return ""
        return parse_qs(body.decode("utf-8"), max_num_fields=10).get("username", [""])[0][:100]
    except (UnicodeError, ValueError, LookupError, TypeError):
        return ""


class SecurityMiddleware:
    """Pure ASGI middleware: the steps of the module doc, in order."""

    def __init__(self, app, policy: "EdgePolicy") -> None:
        self.app = app
        self.policy = policy
        self.S = load(policy.lang)
        self.throttle = LoginThrottle(MAX_LOGIN_FAILURES, policy.login_window)
        self.verified = VerifiedCredentials()
        frame = "'self'" + (" https://huggingface.co https://*.hf.space" if policy.addresses.last_hop else "")
        self.headers = [(b"content-security-policy", f"frame-ancestors {frame}".encode()),
                        (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin")]
        if not policy.addresses.last_hop:
            self.headers.append((b"x-frame-options", b"SAMEORIGIN"))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        policy, headers = self.policy, Headers(scope=scope)
        send = self._with_headers(send)
        # 1. Who is calling.
        if policy.addresses.trusted_peer(scope):
            client = policy.addresses.client(scope, headers.get("x-forwarded-for", ""))
            if client:
                scope["client"] = (client, 0)
            proto = headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
            if proto in ("http", "https"):
                scope["scheme"] = proto if scope["type"] == "http" else proto.replace("http", "ws")
        else:
            # Not from a trusted proxy: the forwarded headers are the client's own words.
            scope["headers"] = [(k, v) for k, v in scope["headers"] if not k.startswith(b"x-forwarded-")]
            headers = Headers(scope=scope)
        # 2. Which name it asked for.
        host = headers.get("host", "")
        if not policy.addresses.host_allowed(host):
            log.warning("refused %s %s for host %r", scope.get("method", "WS"), scope["path"], host[:100])
            await self._refuse(scope, send, 421, "host_not_allowed", {"host": host[:60]})
            return
        # 3. Cross-site: a browser request from another site's page.
        origin = headers.get("origin")
        if origin is not None and not same_origin(origin, headers, scope.get("scheme", "http").replace("ws", "http")):
            log.warning("refused a cross-site %s %s from origin %r", scope.get("method", "WS"), scope["path"], origin[:100])
            await self._refuse(scope, send, 403, "cross_site_refused")
            return
        # 4. Who is logged in.
        path, method = scope["path"], scope.get("method", "GET")
        address = (scope.get("client") or ("unknown", 0))[0]
        is_form = scope["type"] == "http" and method == "POST" and path in LOGIN_PATHS
        is_api = path.startswith(API_PREFIXES)
        user = ""
        form_body = None
        if policy.accounts.required:
            user = policy.accounts.session_user(scope) or ""
            basic = headers.get("authorization", "")
            if not user and is_api and basic.lower().startswith("basic "):
                name = basic_name(basic)
                if not await self._login_allowed(scope, send, address, name):
                    return
                user = self.verified.get(basic) or ""
                if not user:
                    # scrypt takes tens of milliseconds: off the event loop, then remembered.
                    user = await run_in_threadpool(policy.accounts.basic, basic) or ""
                    if not user:
                        self.throttle.failed(address, name)
                        await self._refuse(scope, send, 401, "api_login_required", extra=BASIC_CHALLENGE)
                        return
                    self.verified.put(basic, user)
                self.throttle.succeeded(address, name)
            if is_form:
                # The name being tried counts, not only the address: read the (small) form first.
                try:
                    form_body = await read_body(receive, limit_for(path))
                except BodyTooLarge:
                    await self._refuse(scope, send, 413, "api_body_too_large", {"limit": 1})
                    return
                receive = replay(form_body, receive)
                if not await self._login_allowed(scope, send, address,
                                                 form_name(form_body, headers.get("content-type", ""))):
                    return
            if not user and not is_form and (is_api or method in BODY_METHODS):
                await self._refuse(scope, send, 401, "api_login_required" if is_api else "login_required",
                                   extra=BASIC_CHALLENGE if is_api else None)
                return
        scope.setdefault("state", {})[USER_KEY] = user
        # 5. Whose files.
        if policy.may_read is not None and path.startswith(FILE_ROUTE):
            if not policy.may_read(unquote(path[len(FILE_ROUTE):]), user):
                log.warning("refused %s another user's file %s", user or "a visitor", path[:200])
                await self._refuse(scope, send, 404, "file_not_found")
                return
        if is_form:
            send = self._watch_login(send, address, form_name(form_body or b"", headers.get("content-type", "")))
        if policy.accounts.required and not user and method == "GET":
            send = _without_api_info(send)
        # 6. The body.
        if scope["type"] == "http" and method in BODY_METHODS and form_body is None:
            limit = limit_for(path)
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > max(limit, DRAIN_BYTES):
                await self._refuse(scope, send, 413, "api_body_too_large", {"limit": max(1, limit // MIB)})
                return
            try:
                body = await read_body(receive, limit)
            except BodyTooLarge:
                await self._refuse(scope, send, 413, "api_body_too_large", {"limit": max(1, limit // MIB)})
                return
            if is_json(headers.get("content-type")):
                problem = json_problem(body)
                if problem is not None:
                    await self._refuse(scope, send, 400, problem.code, problem.fields)
                    return
                # 7. Whose files, named as inputs: a job's file input is a path Gradio accepts
                # anywhere under outputs/ (a static folder), so another user's picture, mask or
                # training caption named there is answered like the file route: 404.
                if policy.may_read is not None and path.startswith(JOB_ROUTES):
                    for named in input_paths(body):
                        if not policy.may_read(named, user):
                            log.warning("refused %s naming another user's file %s as an input", user or "a visitor",
                                        named[:200])
                            await self._refuse(scope, send, 404, "file_not_found")
                            return
            receive = replay(body, receive)
        await self.app(scope, receive, send)

    async def _login_allowed(self, scope, send, address: str, name: str = "") -> bool:
        wait = self.throttle.retry_after(address, name)
        if wait <= 0:
            return True
        seconds = max(1, math.ceil(wait))
        await self._refuse(scope, send, 429, "login_throttled", {"seconds": seconds}, {"retry-after": str(seconds)})
        return False

    def _watch_login(self, send, address: str, name: str):
        """The login form's answer: 2xx clears this name's failures from this address, 400/401
        adds one."""

        async def watch(message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                if status in (400, 401):
                    self.throttle.failed(address, name)
                elif 200 <= status < 300:
                    self.throttle.succeeded(address, name)
            await send(message)

        return watch

    def _with_headers(self, send):
        async def framed(message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in self.headers if k not in present]
                if extra:
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return framed

    async def _refuse(self, scope, send, status: int, code: str, fields: dict | None = None,
                      extra: dict | None = None) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"detail": error_text(self.S, code, fields), "error": code, "code": code},
                          ensure_ascii=False).encode("utf-8")
        headers = [(b"content-type", b"application/json; charset=utf-8"), (b"content-length", str(len(body)).encode())]
        headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def input_paths(body: bytes) -> list[str]:
    """Every file path a JSON body names (Gradio's FileData: ``{"path": ...}``; the first
    ``MAX_INPUT_PATHS`` + 1, which is more than any of our inputs takes)."""
    try:
        data = json.loads(body or b"null")
    except ValueError:
        return []
    found: list[str] = []
    stack = [data]
    while stack and len(found) <= MAX_INPUT_PATHS:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("path"), str):
                found.append(item["path"])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


_API_INFO = b"window.gradio_api_info = "


def _without_api_info(send):
    """Gradio's login page (served to visitors not logged in) embeds the API description: every
    endpoint with the file names of every LoRA, upscaler, ControlNet and estimator, which
    ``/gradio_api/info`` itself refuses them. Drop it from HTML answers to such visitors."""
    held: dict = {}

    async def strip(message) -> None:
        if message["type"] == "http.response.start":
            kinds = [v for k, v in message.get("headers", []) if k.lower() == b"content-type"]
            if kinds and kinds[0].startswith(b"text/html"):
                held["start"], held["body"] = message, []
                return
            await send(message)
            return
        if "start" not in held or message["type"] != "http.response.body":
            await send(message)
            return
        held["body"].append(message.get("body", b""))
        if message.get("more_body"):
            return
        html = b"".join(held["body"])
        begin = html.find(_API_INFO)
        end = html.find(b"</script>", begin) if begin >= 0 else -1
        if end > begin >= 0:
            html = html[:begin] + _API_INFO + b'{"named_endpoints": {}, "unnamed_endpoints": {}};' + html[end:]
        headers = [(k, v) for k, v in held["start"].get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(html)).encode()))
        await send({**held["start"], "headers": headers})
        await send({"type": "http.response.body", "body": html})

    return strip


@dataclass(frozen=True)
class EdgePolicy:
    """What the edge enforces, from the command line (app.py)."""

    accounts: Accounts = field(default_factory=Accounts)
    addresses: Addresses = field(default_factory=Addresses)
    login_window: float = DEFAULT_LOGIN_WINDOW
    lang: str | None = None
    may_read: Callable[[str, str], bool] | None = None  # (file path, user): False for another user's output


def security_middleware(policy: EdgePolicy) -> Middleware:
    """The middleware entry for ``app_kwargs["middleware"]``."""
    return Middleware(SecurityMiddleware, policy=policy)
