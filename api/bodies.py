"""Request bodies, counted as they arrive and checked before any route parses them.

Why: ``Content-Length`` is a claim (a chunked body has none), FastAPI and Gradio parse JSON
before their login checks run, and Python's JSON reader turns some inputs into exceptions the
routes never expected (500s with long tracebacks): a number of 5,000 digits, nesting 100,000
deep, bytes that are not UTF-8, a lone surrogate (``"\\ud800"``) that later fails to encode.

1. ``limit_for(path)``: the most bytes a route may receive (the login form: a few KB; uploads
   and the A1111 routes: base64 images; every other route: JSON of a few fields).
2. ``read_body``: reads the whole body, at most ``limit`` bytes, whatever the headers said.
3. ``json_problem``: the first reason a JSON body would fail, as an error code, or None.
4. ``replay``: the body handed to the app as if it had just arrived.
"""

from __future__ import annotations

import json

MIB = 2**20
UPLOAD_BYTES = 64 * MIB  # base64 images inflate by a third: a few 25 MB uploads
FORM_BYTES = 16 * 1024  # the login form
JSON_BYTES = 4 * MIB  # Gradio's JSON routes carry file references, not files
PIECE_BYTES = 26 * MIB  # one piece of the 局部重绘 canvas (ui/inputs.MAX_BLOB_BYTES) in its form
DRAIN_BYTES = 64 * MIB  # an oversized body up to this is read and dropped before the 413
MAX_DEPTH = 64
MAX_DIGITS = 100
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_UPLOAD_PREFIXES = ("/gradio_api/upload", "/sdapi/", "/controlnet/")


class BodyTooLarge(Exception):
    pass


class BodyProblem(ValueError):
    def __init__(self, code: str, **fields) -> None:
        super().__init__(code)
        self.code, self.fields = code, fields


def limit_for(path: str) -> int:
    if path.rstrip("/") == "/login":
        return FORM_BYTES
    if path.startswith("/gradio_api/component_server"):
        return PIECE_BYTES
    if path.startswith(_UPLOAD_PREFIXES):
        return UPLOAD_BYTES
    return JSON_BYTES


def is_json(content_type: str | None) -> bool:
    """FastAPI reads a body as JSON when it says so, or says nothing."""
    if not content_type:
        return True
    kind = content_type.split(";")[0].strip().lower()
    return kind == "application/json" or kind.endswith("+json")


async def read_body(receive, limit: int) -> bytes:
    """The whole body; past ``limit`` bytes BodyTooLarge is raised, after the rest has been
    read and dropped (up to DRAIN_BYTES, so a client still sending can read the 413)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BodyTooLarge  # gone before it finished: nothing to answer
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            chunks = []
            while message.get("more_body") and size <= DRAIN_BYTES:
                message = await receive()
                size += len(message.get("body", b""))
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _number(kind):
    def parse(text: str):
        if len(text) > MAX_DIGITS:
            raise BodyProblem("number_too_long", limit=MAX_DIGITS)
        return kind(text)

    return parse


def _check_text(text: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise BodyProblem("text_bad_unicode") from None


def json_problem(body: bytes) -> BodyProblem | None:
    """Why this JSON body would break a route (error code and fields), or None."""
    if not body.strip():
        return None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return BodyProblem("body_not_utf8")
    try:
        value = json.loads(text, parse_int=_number(int), parse_float=_number(float))
    except BodyProblem as problem:
        return problem
    except RecursionError:
        return BodyProblem("json_too_deep", limit=MAX_DEPTH)
    except ValueError:
        return None  # not JSON at all: the route answers that in its own words (a 422)
    # Depth and text, without recursion.
    stack = [(value, 1)]
    try:
        while stack:
            item, depth = stack.pop()
            if isinstance(item, str):
                _check_text(item)
            elif isinstance(item, (dict, list)):
                if depth > MAX_DEPTH:
                    return BodyProblem("json_too_deep", limit=MAX_DEPTH)
                if isinstance(item, dict):
                    for key, inner in item.items():
                        _check_text(key)
                        stack.append((inner, depth + 1))
                else:
                    stack.extend((inner, depth + 1) for inner in item)
    except BodyProblem as problem:
        return problem
    return None


def replay(body: bytes, receive):
    """A ``receive`` that hands over ``body`` once, then passes on what the client sends
    next (its disconnect)."""
    sent = False

    async def again():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again
