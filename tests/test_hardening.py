"""Hardening (issue 7) against really launched apps, by raw HTTP on 127.0.0.1 and gradio_client:
file routes and file payloads that name server paths or internal URLs, cross-site requests,
login throttling, queue overflow, and hostile parameter values."""

from __future__ import annotations

import base64
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import json
import re
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib

import pytest

from conftest import ACCOUNTS, ROOT

CHINESE = re.compile(r"[\u4e00-\u9fff]")
FILE_DATA = {"_type": "gradio.FileData"}


# -- helpers ------------------------------------------------------------------------------------
def fetch(app, path: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None):
    """(status, body text, response headers) of one raw request; never raises on HTTP errors."""
    request = urllib.request.Request(app.url.rstrip("/") + path, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode("utf-8", "replace"), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace"), exc.headers


def call(app, api_name: str, params: dict) -> tuple[str, object]:
    """One job through Gradio's raw REST API (named parameters): ("complete", data) or ("error", message)."""
    body = json.dumps(params).encode()  # allow_nan: NaN and Infinity go out as JS literals
    status, text, _ = fetch(app, f"/gradio_api/call/v2/{api_name}", body, {"Content-Type": "application/json"})
    assert status == 200, (status, text[:300])
    event_id = json.loads(text)["event_id"]
    _, stream, _ = fetch(app, f"/gradio_api/call/{api_name}/{event_id}")
    events = re.findall(r"^event: (\w+)\ndata: (.*)$", stream, re.MULTILINE)
    kind, data = events[-1]
    payload = json.loads(data)
    if kind == "error":
        return "error", payload.get("error") if isinstance(payload, dict) else payload
    return kind, payload


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height, with almost no pixel data (69 bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture
def recording_server():
    """A local HTTP server that records every request it gets (to prove none was made)."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(png_header_only(8, 8))

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()


def assert_still_serving(app, auth=None) -> None:
    gallery, _ = app.client(auth=auth).predict(prompt="猫", width=64, height=64, num_inference_steps=1, api_name="/txt2img")
    assert len(gallery) == 1


# 1. File routes and file payloads ------------------------------------------------------------
def test_file_routes_refuse_server_paths_without_telling_what_exists(demo_app, demo_models):
    # A file the app did create is served: the refusals below are not a broken route.
    kind, data = call(demo_app, "txt2img", {"prompt": "猫", "width": 64, "height": 64, "num_inference_steps": 1})
    assert kind == "complete"
    served = data[0][0]["image"]["url"]
    assert urllib.request.urlopen(served, timeout=10).status == 200

    bundle_file = next(p for p in demo_models.rglob("*.json"))
    targets = [
        "/etc/passwd", "/etc/../etc/passwd", "..%2f..%2f..%2f..%2fetc%2fpasswd", "%2fetc%2fpasswd",
        str(ROOT / "app.py"), "app.py", "../app.py", str(ROOT / "models"), str(ROOT / "models" / "README.md"),
        str(demo_models), str(bundle_file),
        "http://169.254.169.254/latest/meta-data/", f"http://127.0.0.1:{demo_app.port}/config",
    ]
    for prefix in ("/gradio_api/file=", "/file="):
        for target in targets:
            status, body, _ = fetch(demo_app, prefix + target)
            assert status in (403, 404), (prefix, target, status)
            assert "root:" not in body and "def main" not in body and "_class_name" not in body
    # An existing file and a missing one get the same answer (only the echoed name differs).
    for existing in ("/etc/passwd", str(ROOT / "app.py"), str(bundle_file)):
        found = fetch(demo_app, "/gradio_api/file=" + existing)
        missing = fetch(demo_app, "/gradio_api/file=" + existing + "-missing")
        assert found[0] == missing[0]
        assert found[1].replace(existing, "X") == missing[1].replace(existing + "-missing", "X")


def test_file_payloads_naming_server_paths_or_internal_urls_are_refused(demo_app, recording_server):
    local, hits = recording_server
    payloads = [
        {"path": "/etc/passwd", "meta": FILE_DATA},
        {"path": str(ROOT / "app.py"), "meta": FILE_DATA},
        {"path": "../../../../etc/passwd", "meta": FILE_DATA},
        {"path": "x.png", "url": "http://169.254.169.254/latest/meta-data/", "meta": FILE_DATA},
        {"path": "x.png", "url": f"{local}/a.png", "meta": FILE_DATA},
        {"url": f"{local}/b.png", "meta": FILE_DATA},
    ]
    for payload in payloads:
        kind, message = call(demo_app, "canny_preview", {"image": payload})
        assert kind == "error", payload
        kind, message = call(demo_app, "upscale", {"image": [payload]})
        assert kind == "error", payload
        assert "root:" not in str(message)
    kind, _ = call(demo_app, "canny_preview", {"image": "/etc/passwd"})
    assert kind == "error"
    assert hits == []  # the server never fetched the URLs it was given
    assert_still_serving(demo_app)


# 2. Cross-site requests ----------------------------------------------------------------------
@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "192.168.1.23:{port}", "localhost:{port}"])
def test_cross_site_requests_are_refused_on_every_address(demo_app, host):
    host = host.format(port=demo_app.port)
    evil = {"Host": host, "Origin": "http://evil.example"}
    status, body, _ = fetch(demo_app, "/config", headers=evil)
    assert status == 403 and CHINESE.search(json.loads(body)["detail"])
    job = json.dumps({"data": ["猫"]}).encode()
    for path, data in (("/gradio_api/call/system_info", b'{"data": []}'), ("/gradio_api/call/txt2img", job),
                       ("/sdapi/v1/png-info", b'{"image": ""}'), ("/gradio_api/upload", b"x")):
        status, _, _ = fetch(demo_app, path, data, {**evil, "Content-Type": "application/json"})
        assert status == 403, path
    for origin in ("null", f"http://{host}.evil.example", f"https://evil.example/{host}"):
        assert fetch(demo_app, "/config", headers={"Host": host, "Origin": origin})[0] == 403, origin
    # The page's own origin, and clients that send no Origin (scripts, gradio_client), pass.
    assert fetch(demo_app, "/config", headers={"Host": host, "Origin": f"http://{host}"})[0] == 200
    assert fetch(demo_app, "/config", headers={"Host": host})[0] == 200
    # X-Forwarded-Host is believed only from a configured proxy (--forwarded-allow-ips): a
    # client that writes it itself gains nothing (tests/test_attacks.py covers the proxy).
    assert fetch(demo_app, "/config", headers={"Host": "10.0.0.5:8080", "X-Forwarded-Host": host,
                                              "Origin": f"http://{host}"})[0] == 403


def test_same_origin_page_and_api_clients_still_work(demo_app):
    status, body, _ = fetch(demo_app, "/gradio_api/call/system_info", b'{"data": []}',
                           {"Content-Type": "application/json", "Origin": demo_app.url.rstrip("/")})
    assert status == 200 and "event_id" in body
    assert demo_app.client().predict(api_name="/system_info")["demo"] is True


# 4. Queue overflow (before the login test: that one locks 127.0.0.1 out for a moment) -------
def test_queue_overflow_is_answered_busy_at_once_and_accepted_jobs_finish(busy_app):
    clients = [busy_app.client(auth=ACCOUNTS[0]) for _ in range(6)]
    clients[0].predict(prompt="猫", width=64, height=64, num_inference_steps=1, api_name="/txt2img")  # load the model
    outcomes: dict[int, tuple] = {}

    def job(i: int) -> None:
        started = time.time()
        try:
            gallery, _ = clients[i].predict(prompt="猫", width=64, height=64, num_inference_steps=30, seed=i, api_name="/txt2img")
            outcomes[i] = ("ok", len(gallery), time.time() - started)
        except Exception as exc:  # gradio_client's QueueError
            outcomes[i] = ("busy", str(exc), time.time() - started)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(6)]
    started = time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(outcomes) == 6 and time.time() - started < 60, outcomes
    done = [o for o in outcomes.values() if o[0] == "ok"]
    busy = [o for o in outcomes.values() if o[0] == "busy"]
    assert busy and len(done) >= 3, outcomes  # one running + 2 waiting are always accepted
    assert all(o[1] == 1 for o in done)
    assert all("queue is full" in o[1].lower() and o[2] < 5 for o in busy), busy  # answered at once


# 3. Login throttling ---------------------------------------------------------------------------
def test_failed_logins_are_throttled_then_the_right_password_works(busy_app):
    user, password = ACCOUNTS[0]
    form = lambda p: urllib.parse.urlencode({"username": user, "password": p}).encode()  # noqa: E731
    answers = [fetch(busy_app, "/login", form("wrong"))[0] for _ in range(5)]
    assert answers == [400] * 5
    status, body, headers = fetch(busy_app, "/login", form(password))  # right password, but locked
    assert status == 429 and CHINESE.search(json.loads(body)["detail"]) and int(headers["Retry-After"]) >= 1
    time.sleep(2.2)  # --login-window 2
    assert fetch(busy_app, "/login", form(password))[0] == 200

    # HTTP Basic on /sdapi: the same limit.
    def basic(p):
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{p}".encode()).decode()}

    assert [fetch(busy_app, "/sdapi/v1/samplers", headers=basic("x"))[0] for _ in range(5)] == [401] * 5
    assert fetch(busy_app, "/sdapi/v1/samplers", headers=basic(password))[0] == 429
    time.sleep(2.2)
    assert fetch(busy_app, "/sdapi/v1/samplers", headers=basic(password))[0] == 200
    assert_still_serving(busy_app, auth=ACCOUNTS[0])


# 5. Hostile parameter values -------------------------------------------------------------------
NAN, INF = float("nan"), float("inf")
BAD_TXT2IMG = [
    {"num_inference_steps": NAN}, {"num_inference_steps": INF}, {"num_inference_steps": -INF},
    {"guidance_scale": NAN}, {"guidance_scale": INF}, {"guidance_scale": -INF},
    {"width": 10**9}, {"height": -(10**9)}, {"num_images_per_prompt": NAN},
    {"seed": 2**64}, {"seed": "abc"}, {"seed": NAN},
    {"prompt": "猫" * 100_000},
    {"sampler": "no-such-sampler"},
    {"loras": [["no-such-lora", 1.0]]}, {"loras": [["x", NAN]]}, {"loras": [["x", INF]]}, {"loras": "abc"},
]


@pytest.mark.parametrize("bad", BAD_TXT2IMG, ids=lambda b: f"{next(iter(b))}={str(next(iter(b.values())))[:12]}")
def test_hostile_txt2img_values_get_a_chinese_error(demo_app, bad):
    kind, message = call(demo_app, "txt2img", {"prompt": "猫", "width": 64, "height": 64, "num_inference_steps": 1, **bad})
    assert kind == "error" and message and CHINESE.search(message), (bad, message)


def test_unknown_model_and_controlnet_names_get_a_chinese_error(demo_app, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    from PIL import Image

    kind, message = call(demo_app, "switch_model", {"ref": "no-such-model"})
    assert kind == "error" and CHINESE.search(message or ""), message
    image = tmp_path / "edge.png"
    Image.new("RGB", (64, 64), "white").save(image)
    with pytest.raises(AppError, match=CHINESE.pattern):
        demo_app.client().predict(image=handle_file(str(image)), prompt="猫", width=64, height=64, num_inference_steps=1,
                                  controlnet_model="no-such-controlnet", api_name="/canny")
    assert_still_serving(demo_app)


def test_header_only_144_megapixel_png_is_refused_from_its_header(demo_app, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from PIL import Image

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(12000, 12000))
    assert bomb.stat().st_size < 100
    client = demo_app.client()
    # An ordinary image still goes through the same inputs.
    fine = tmp_path / "fine.png"
    Image.new("RGB", (64, 48), "white").save(fine)
    edges = client.predict(image=handle_file(str(fine)), api_name="/canny_preview")
    assert Image.open(edges).size == (64, 48)
    for api_name, args in (("/canny_preview", {"image": handle_file(str(bomb))}),
                           ("/upscale", {"image": [handle_file(str(bomb))]})):
        started = time.time()
        with pytest.raises(AppError) as info:
            client.predict(api_name=api_name, **args)
        assert "图片太大" in str(info.value), (api_name, str(info.value))
        assert time.time() - started < 10
    assert_still_serving(demo_app)


def test_origin_matching_and_throttle_window_rules():
    from starlette.datastructures import Headers

    from api.security import LoginThrottle, same_origin

    assert same_origin("https://studio.example", Headers({"host": "studio.example:443"}), "https")
    assert same_origin("http://[::1]:7860", Headers({"host": "[::1]:7860"}), "http")
    assert same_origin("https://studio.example", Headers({"host": "127.0.0.1:7860", "x-forwarded-host": "studio.example",
                                                          "x-forwarded-proto": "https"}), "http")
    assert not same_origin("http://studio.example:7861", Headers({"host": "studio.example:7860"}), "http")
    assert not same_origin("null", Headers({"host": "studio.example"}), "http")
    throttle = LoginThrottle(limit=3, window=10)
    for t in (0, 1, 2):
        assert throttle.retry_after("a", now=t) == 0
        throttle.failed("a", now=t)
    assert throttle.retry_after("a", now=3) == pytest.approx(7) and throttle.retry_after("b", now=3) == 0
    assert throttle.retry_after("a", now=10.5) == 0  # the oldest failure left the window
    throttle.failed("a", now=11)
    throttle.succeeded("a")
    assert throttle.retry_after("a", now=11) == 0
