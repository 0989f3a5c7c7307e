"""The second attacker's battery (issue 13), each attack against a really launched app on
loopback, with bounded loops: the refusal, the server still answering others promptly, memory
bounded.

Two apps: ``demo_app`` (conftest: a desktop, no login, loopback) and ``team_app`` below: a team
server with three accounts (设计部 is the administrator), a proxy it trusts at 127.0.0.9, a name
it answers to (studio.lan), small queue caps, a per-user outputs cap, and a preview decoder
folder that cannot load. Clients are told apart by address: each test speaks from its own
loopback address (127.0.0.x)."""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
import socket
import threading
import time
import urllib.parse

import pytest
from PIL import Image, PngImagePlugin

from conftest import LaunchedApp

CHINESE = re.compile(r"[\u4e00-\u9fff]")
# 设计部: the first, so the administrator; 实习生 only fills its outputs folder.
ACCOUNTS = {"设计部": "密码", "bot": "secret", "访客": "guest", "实习生": "intern"}
MIB = 2**20


# -- helpers ------------------------------------------------------------------------------------
def request(app, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None,
            source: str = "127.0.0.1", timeout: float = 120) -> tuple[int, bytes, http.client.HTTPMessage]:
    """(status, body, headers) of one raw request sent from ``source``."""
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=timeout, source_address=(source, 0))
    try:
        if isinstance(body, str):
            body = body.encode()
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read(), response.headers
    finally:
        conn.close()


def answer(body: bytes) -> dict:
    return json.loads(body.decode("utf-8"))


def basic(user: str, password: str | None = None) -> dict:
    token = base64.b64encode(f"{user}:{ACCOUNTS[user] if password is None else password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


JSON = {"Content-Type": "application/json"}


def api(app, path: str, payload, user: str = "bot", source: str = "127.0.0.1", timeout: float = 120):
    body = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
    return request(app, "POST", path, body, {**JSON, **basic(user)}, source=source, timeout=timeout)


def login(app, user: str, source: str = "127.0.0.1") -> str:
    """Log in through Gradio's form; returns the Cookie header of the session."""
    form = urllib.parse.urlencode({"username": user, "password": ACCOUNTS[user]})
    status, _, headers = request(app, "POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded"},
                                 source=source)
    assert status == 200
    cookies = [c.split(";")[0] for c in headers.get_all("set-cookie")]
    return "; ".join(cookies)


def rss_mb(app) -> float:
    with open(f"/proc/{app.proc.pid}/status") as status:
        return int(re.search(r"VmRSS:\s+(\d+)", status.read()).group(1)) / 1024


def answers_promptly(app, source: str = "127.0.0.250", limit: float = 2.0) -> bool:
    """A cheap route answers within ``limit`` seconds."""
    started = time.perf_counter()
    status, _, _ = request(app, "GET", "/config", source=source, timeout=30)
    return status in (200, 401) and time.perf_counter() - started < limit


def png_with_text(text: str, size: tuple[int, int] = (8, 8)) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("parameters", text)
    buffer = io.BytesIO()
    Image.new("RGB", size).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def in_thread(fn, *args, **kwargs) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run():
        started = time.perf_counter()
        try:
            result["value"] = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 (reported by the test)
            result["error"] = exc
        result["seconds"] = time.perf_counter() - started
        result["done"] = time.perf_counter()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def no_tracebacks_since(app, mark: int) -> str:
    """The app's log written after ``mark`` bytes, asserted free of tracebacks."""
    text = app.log.read_bytes()[mark:].decode("utf-8", "replace")
    assert "Traceback" not in text, text[-3000:]
    return text


@pytest.fixture(scope="module")
def team_app(demo_models, demo_cache, tmp_path_factory):
    """A LAN team server: three accounts, a trusted proxy at 127.0.0.9, the name studio.lan,
    two jobs per client and six in all, 1 MB of saved images per user, and a broken preview
    decoder folder (models/vae-approx/taesd-broken) asked for with --preview taesd."""
    from pipelines.demo import DEMO_MODEL

    work = tmp_path_factory.mktemp("team")
    models = work / "models"
    models.mkdir()
    for child in demo_models.iterdir():
        if child.is_dir() and child.name != "vae-approx":
            (models / child.name).symlink_to(child, target_is_directory=True)
    broken = models / "vae-approx" / "taesd-broken"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text('{"_class_name": "AutoencoderTiny"}')
    (broken / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    accounts = ",".join(f"{user}:{password}" for user, password in ACCOUNTS.items())
    app = LaunchedApp(["--models-dir", str(models), "--model", DEMO_MODEL, "--offline", "--api", "--auth", accounts,
                       "--login-window", "3", "--queue-size", "6", "--client-queue-limit", "2",
                       "--allowed-hosts", "studio.lan", "--forwarded-allow-ips", "127.0.0.9",
                       "--max-user-outputs-mb", "1", "--preview", "taesd", "--preview-every", "0"],
                      demo_cache, work / "outputs")
    yield app
    app.stop()


SMALL = {"prompt": "猫", "width": 64, "height": 64, "steps": 1}


# 1. The A1111 parameters parser ---------------------------------------------------------------
N = 60_000
ADVERSARIAL_TEXTS = {
    "words and spaces": "a " * (N // 2),
    "one long word": "a" * N,
    "keys without values": "a:" * (N // 2),
    "quotes": '"' * N,
    "unclosed quoted values": 'a: "' * (N // 4),
    "backslashes in quotes": 'a: "\\' * (N // 5),
    "pairs without commas": "Steps: 20 " * (N // 10),
    "many short pairs": "a: b, " * (N // 6),
    "long key then colon": "a" * N + ":",
    "spaces then colon": " " * N + "a:",
    "one megabyte": "Steps " * (MIB // 6),
}


@pytest.mark.parametrize("shape", list(ADVERSARIAL_TEXTS))
def test_parameters_parser_is_linear_for_every_shape(shape):
    from pipelines.formats.pnginfo import MAX_PARAMETERS_CHARS, parse_parameters

    text = ADVERSARIAL_TEXTS[shape]
    started = time.perf_counter()
    for prefix in ("", "prompt\nNegative prompt: x\n"):
        parsed = parse_parameters(prefix + text)
    assert time.perf_counter() - started < 0.5, shape
    assert len(parsed["prompt"]) + len(parsed["negative_prompt"]) <= MAX_PARAMETERS_CHARS


def test_parameters_parser_still_reads_a1111_text():
    from pipelines.formats.pnginfo import format_parameters, parse_parameters

    text = format_parameters("猫, 山水", "模糊", {"Steps": 20, "Sampler": "DPM++ 2M Karras", "CFG scale": 7, "Seed": 1,
                                                  "Size": "512x512", "Lora hashes": "a: 1, b: 2"})
    parsed = parse_parameters(text)
    assert parsed["prompt"] == "猫, 山水" and parsed["negative_prompt"] == "模糊"
    assert parsed["fields"] == {"Steps": "20", "Sampler": "DPM++ 2M Karras", "CFG scale": "7", "Seed": "1",
                                "Size": "512x512", "Lora hashes": "a: 1, b: 2"}


def test_png_info_with_hostile_parameters_answers_at_once_and_never_freezes_the_server(demo_app):
    """The attack: a PNG whose parameters text makes a backtracking regex take minutes, sent to
    /sdapi/v1/png-info and to the 图片信息 tab's event, while another client asks for a page."""
    for shape in ("words and spaces", "unclosed quoted values", "one megabyte"):
        image = png_with_text(ADVERSARIAL_TEXTS[shape])
        thread, result = in_thread(request, demo_app, "POST", "/sdapi/v1/png-info", json.dumps({"image": b64(image)}),
                                   JSON, source="127.0.0.21")
        time.sleep(0.05)
        assert answers_promptly(demo_app), shape
        thread.join(30)
        status, body, _ = result["value"]
        assert status == 200 and result["seconds"] < 5, (shape, result["seconds"])
        assert len(answer(body)["info"]) <= 64 * 1024
    # The UI's 图片信息 tab (its event reads the same text) and its 发送 button's parser.
    from gradio_client import Client, handle_file

    path = demo_app.outputs.parent / "hostile.png"
    path.write_bytes(png_with_text(ADVERSARIAL_TEXTS["words and spaces"]))
    started = time.perf_counter()
    text = Client(demo_app.url, verbose=False).predict(handle_file(str(path)), api_name="/png_info")
    assert time.perf_counter() - started < 10 and len(text) <= 64 * 1024


# 2. The login throttle --------------------------------------------------------------------------
def test_guesses_interleaved_with_unchecked_basic_headers_are_still_throttled(team_app):
    """The attack: wrong passwords for the A1111 API, each followed by a request that carries a
    Basic header to a route that never checks it (it used to count as a successful login)."""
    source = "127.0.0.31"
    statuses = []
    for guess in range(40):
        status, _, _ = request(team_app, "GET", "/sdapi/v1/samplers", headers=basic("bot", f"guess{guess}"), source=source)
        statuses.append(status)
        for path in ("/config", "/gradio_api/info", "/favicon.ico"):
            request(team_app, "GET", path, headers=basic("bot"), source=source)  # right password, never checked there
    assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}, statuses
    # Locked out: even the right password is not tried (so it cannot clear the record) ...
    status, body, headers = request(team_app, "GET", "/sdapi/v1/samplers", headers=basic("bot"), source=source)
    assert status == 429 and CHINESE.search(answer(body)["detail"]) and int(headers["retry-after"]) >= 1
    # ... other addresses are not affected, and after the window the right password works.
    assert request(team_app, "GET", "/sdapi/v1/samplers", headers=basic("bot"), source="127.0.0.32")[0] == 200
    time.sleep(3.2)
    assert request(team_app, "GET", "/sdapi/v1/samplers", headers=basic("bot"), source=source)[0] == 200
    # The form login counts too, and only its accepted answer clears the record.
    for _ in range(5):
        form = urllib.parse.urlencode({"username": "bot", "password": "wrong"})
        request(team_app, "POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded"}, source=source)
    assert request(team_app, "GET", "/sdapi/v1/samplers", headers=basic("bot"), source=source)[0] == 429
    time.sleep(3.2)
    login(team_app, "bot", source=source)
    assert request(team_app, "GET", "/sdapi/v1/samplers", headers=basic("bot", "wrong"), source=source)[0] == 401


# 3. ControlNet units are counted before they are decoded ------------------------------------------
def big_map_png() -> bytes:
    """A 40-megapixel control map that compresses to a few KB."""
    buffer = io.BytesIO()
    Image.new("L", (6000, 6600)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def test_thirty_compressed_40_megapixel_units_are_refused_before_any_is_decoded(team_app):
    encoded = b64(big_map_png())
    units = [{"image": encoded, "module": "none", "model": "demo-depth.safetensors"} for _ in range(30)]
    before = rss_mb(team_app)
    started = time.perf_counter()
    status, body, _ = api(team_app, "/sdapi/v1/txt2img", {**SMALL, "alwayson_scripts": {"controlnet": {"args": units}}},
                          source="127.0.0.33")
    assert status == 422 and answer(body)["code"] == "controlnet_too_many_units", body[:300]
    assert CHINESE.search(answer(body)["detail"]) and time.perf_counter() - started < 5
    # Within the count, an unknown model in the last unit is refused before the first is decoded.
    units = units[:2] + [{"image": encoded, "module": "none", "model": "no-such-controlnet"}]
    status, body, _ = api(team_app, "/sdapi/v1/txt2img", {**SMALL, "alwayson_scripts": {"controlnet": {"args": units}}},
                          source="127.0.0.33")
    assert status == 422 and answer(body)["code"] == "unknown_model_name", body[:300]
    assert rss_mb(team_app) - before < 150, (before, rss_mb(team_app))
    assert answers_promptly(team_app)


# 4. Bodies: nothing read before the login, a byte counter on every route ---------------------------
def send_chunked(app, path: str, total: int, headers: dict | None = None, source: str = "127.0.0.41",
                 chunk: int = MIB) -> tuple[int | None, bytes, int]:
    """Stream up to ``total`` bytes as a chunked body, stopping as soon as the server answers or
    hangs up. Returns (status or None, body, bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", app.port), timeout=30, source_address=(source, 0))
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{app.port}\r\nTransfer-Encoding: chunked\r\n"
    head += "Content-Type: application/json\r\n" + "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()) + "\r\n"
    sock.sendall(head.encode("utf-8"))
    payload = b"[" + b"1," * (chunk // 2 - 1) + b"1"
    frame = f"{len(payload):x}\r\n".encode() + payload + b"\r\n"
    sent = 0
    sock.setblocking(False)
    try:
        while sent < total:
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break  # the server has answered: stop sending
            except BlockingIOError:
                pass
            try:
                sock.setblocking(True)
                sock.sendall(frame)
                sent += len(payload)
            except (BrokenPipeError, ConnectionResetError):
                break
            finally:
                sock.setblocking(False)
        else:
            sock.setblocking(True)
            sock.sendall(b"0\r\n\r\n")
        sock.setblocking(True)
        data = b""
        try:
            while b"\r\n\r\n" not in data or len(data) < data.find(b"\r\n\r\n") + 4 + _length(data):
                more = sock.recv(65536)
                if not more:
                    break
                data += more
        except (ConnectionResetError, socket.timeout):
            pass
    finally:
        sock.close()
    match = re.match(rb"HTTP/1.1 (\d+)", data)
    return (int(match.group(1)) if match else None), data.split(b"\r\n\r\n", 1)[-1], sent


def _length(data: bytes) -> int:
    match = re.search(rb"content-length: (\d+)", data, re.IGNORECASE)
    return int(match.group(1)) if match else 0


def test_an_unauthenticated_chunked_gigabyte_is_refused_before_its_body_is_read(team_app):
    before = rss_mb(team_app)
    for path in ("/gradio_api/queue/join", "/sdapi/v1/txt2img", "/gradio_api/upload", "/gradio_api/run/txt2img"):
        status, body, sent = send_chunked(team_app, path, total=1024 * MIB)
        assert status == 401 and CHINESE.search(answer(body)["detail"]), (path, status, body[:200])
        assert sent <= 64 * MIB, (path, sent)  # answered long before a gigabyte went out
    assert rss_mb(team_app) - before < 100
    assert answers_promptly(team_app)


def test_logged_in_bodies_are_counted_whatever_the_headers_say(team_app):
    cookie = login(team_app, "bot", source="127.0.0.42")
    before = rss_mb(team_app)
    # A chunked body past the route's limit: 413 (Gradio's JSON routes: 4 MB; the A1111 routes: 64 MB).
    status, body, sent = send_chunked(team_app, "/gradio_api/queue/join", total=256 * MIB, headers={"Cookie": cookie},
                                      source="127.0.0.42")
    assert status == 413 and CHINESE.search(answer(body)["detail"]) and sent < 128 * MIB, (status, sent)
    status, body, sent = send_chunked(team_app, "/sdapi/v1/txt2img", total=1024 * MIB, headers=basic("bot"),
                                      source="127.0.0.42")
    assert status == 413 and sent < 256 * MIB, (status, sent)
    assert rss_mb(team_app) - before < 250, (before, rss_mb(team_app))
    assert answers_promptly(team_app)


# 5. Every GPU job, whatever its route, in the same caps and turns; gone callers stop ---------------
LONG = {"prompt": "山水", "width": 256, "height": 256, "steps": 40}


def test_a1111_and_direct_run_jobs_count_in_the_per_client_cap(team_app):
    source = "127.0.0.51"
    cookie = login(team_app, "访客", source=source)
    running = [in_thread(api, team_app, "/sdapi/v1/txt2img", LONG, "访客", source) for _ in range(2)]
    time.sleep(1.0)
    for _ in range(2):
        status, body, _ = api(team_app, "/sdapi/v1/txt2img", SMALL, "访客", source)
        assert status == 429 and answer(body)["error"] == "client_queue_full" and CHINESE.search(answer(body)["detail"])
    status, body, _ = request(team_app, "POST", "/gradio_api/run/txt2img", json.dumps({"data": ["猫"]}),
                              {**JSON, "Cookie": cookie}, source=source)
    assert status == 429 and answer(body)["error"] == "client_queue_full"
    status, body, _ = request(team_app, "POST", "/gradio_api/call/v2/txt2img", json.dumps({"prompt": "猫"}),
                              {**JSON, "Cookie": cookie}, source=source)
    assert status == 429, body[:200]
    # The page's quick events (no GPU) are not jobs: they still answer.
    status, body, _ = request(team_app, "POST", "/gradio_api/run/system_info", json.dumps({"data": []}),
                              {**JSON, "Cookie": cookie}, source=source)
    assert status == 200, body[:200]
    # Another client is not affected.
    assert api(team_app, "/sdapi/v1/txt2img", SMALL, "bot", "127.0.0.57")[0] == 200
    for thread, result in running:
        thread.join(120)
        assert result["value"][0] == 200, result


def test_a_second_client_does_not_wait_behind_the_first_clients_queue(team_app):
    """Client A has two long jobs in; client B's one-step job goes next, not after both."""
    a = [in_thread(api, team_app, "/sdapi/v1/txt2img", LONG, "bot", "127.0.0.52")]
    time.sleep(0.5)
    a.append(in_thread(api, team_app, "/sdapi/v1/txt2img", LONG, "bot", "127.0.0.52"))
    time.sleep(0.5)
    b = in_thread(api, team_app, "/sdapi/v1/txt2img", SMALL, "设计部", "127.0.0.53")
    for thread, _ in (*a, b):
        thread.join(180)
    assert all(result["value"][0] == 200 for _, result in (*a, b))
    first, second = a[0][1], a[1][1]
    assert first["done"] < b[1]["done"] < second["done"], (first["done"], b[1]["done"], second["done"])


def start_and_hang_up(app, payload: dict | str, user: str, source: str, after: float,
                      path: str = "/sdapi/v1/txt2img", cookie: str | None = None) -> None:
    """Send a job over a raw socket, then close the connection after ``after`` seconds."""
    body = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
    login_header = f"Cookie: {cookie}" if cookie else f"Authorization: {basic(user)['Authorization']}"
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{app.port}\r\nContent-Type: application/json\r\n"
            f"{login_header}\r\nContent-Length: {len(body)}\r\n\r\n")
    sock = socket.create_connection(("127.0.0.1", app.port), timeout=30, source_address=(source, 0))
    sock.sendall(head.encode("utf-8") + body)
    time.sleep(after)
    sock.close()


def test_a_job_whose_caller_hangs_up_stops_and_the_next_one_runs(team_app):
    """A 150-step job (about 15 s here) whose client goes away after a second; a waiting job of
    a client that also went away leaves the line. The next caller's job then runs at once."""
    seeds_before = {p.name for p in team_app.outputs.rglob("*.png")}
    started = time.perf_counter()
    threading.Thread(target=start_and_hang_up, args=(team_app, {**LONG, "steps": 150, "seed": 4242}, "bot",
                                                      "127.0.0.54", 1.5), daemon=True).start()
    time.sleep(0.5)
    threading.Thread(target=start_and_hang_up, args=(team_app, {**LONG, "steps": 150, "seed": 4343}, "bot",
                                                      "127.0.0.55", 1.0), daemon=True).start()
    time.sleep(2.0)
    status, body, _ = api(team_app, "/sdapi/v1/txt2img", SMALL, "设计部", "127.0.0.56")
    assert status == 200
    assert time.perf_counter() - started < 10, "the abandoned jobs ran on"
    time.sleep(1.0)
    made = {p.name for p in team_app.outputs.rglob("*.png")} - seeds_before
    assert not any("-4242" in name or "-4343" in name for name in made), made


def test_a_direct_run_call_whose_caller_hangs_up_stops(team_app):
    cookie = login(team_app, "bot", "127.0.0.58")
    before = {p.name for p in team_app.outputs.rglob("*.png")}
    started = time.perf_counter()
    payload = json.loads(run_payload("山水", 150, 256))
    payload["data"][6] = 4545  # the seed, to find its image should one be made
    threading.Thread(target=start_and_hang_up, args=(team_app, json.dumps(payload), "bot", "127.0.0.58", 1.5,
                                                      "/gradio_api/run/txt2img", cookie), daemon=True).start()
    time.sleep(2.5)
    assert api(team_app, "/sdapi/v1/txt2img", SMALL, "设计部", "127.0.0.59")[0] == 200
    assert time.perf_counter() - started < 10, "the abandoned job ran on"
    time.sleep(1.0)
    assert not any("-4545" in name for name in {p.name for p in team_app.outputs.rglob("*.png")} - before)


# 6. DNS rebinding ------------------------------------------------------------------------------
def test_a_loopback_server_answers_only_to_loopback_names(demo_app):
    """The attack: a page on evil.example whose name now resolves to 127.0.0.1; the browser sends
    Host and Origin evil.example, so the request looks same-origin."""
    for path, body in (("/config", None), ("/sdapi/v1/txt2img", json.dumps(SMALL)), ("/gradio_api/info", None),
                       ("/sdapi/v1/options", None)):
        for name in ("evil.example", "evil.example:7860", "127.0.0.1.evil.example", "localhost.evil.example"):
            headers = {"Host": name, "Origin": f"http://{name}", **JSON}
            status, text, _ = request(demo_app, "POST" if body else "GET", path, body, headers)
            # Only the refusal comes back (Gradio's CORS layer, outside ours, may still label it
            # readable for that origin: it reveals nothing but the refusal).
            assert status == 421 and set(answer(text)) == {"detail", "error", "code"}, (path, name, status)
            assert CHINESE.search(answer(text)["detail"])
    # Loopback names and IP addresses still work (a rebinding needs a name).
    for name in (f"localhost:{demo_app.port}", f"127.0.0.1:{demo_app.port}", f"[::1]:{demo_app.port}", "10.1.2.3"):
        assert request(demo_app, "GET", "/config", headers={"Host": name})[0] == 200, name


def test_names_given_with_allowed_hosts_are_answered(team_app):
    assert request(team_app, "GET", "/config", headers={"Host": "studio.lan:7860"})[0] == 401  # answered: login first
    assert request(team_app, "GET", "/config", headers={"Host": "other.lan"})[0] == 421


# 7. Users are separated ------------------------------------------------------------------------
def run_payload(prompt: str = "猫", steps: int = 1, size: int = 64) -> str:
    """A direct /gradio_api/run/txt2img body (every parameter, in the API's order)."""
    return json.dumps({"data": [prompt, "", steps, 7.0, size, size, -1, 1, "DPM++ 2M Karras", [], "", 2, 0, False,
                               False, 0.4, 0, 1, "Automatic", 0.3]})


def test_one_users_images_are_not_served_to_another(team_app):
    status, body, _ = api(team_app, "/sdapi/v1/txt2img", SMALL, "bot", "127.0.0.71")
    assert status == 200
    name = json.loads(answer(body)["info"])["files"][0]
    path = next(team_app.outputs.rglob(name))
    assert "users" in path.parts and "bot" in path.parts
    route = "/gradio_api/file=" + urllib.parse.quote(str(path))
    assert request(team_app, "GET", route, headers={"Cookie": login(team_app, "bot", "127.0.0.71")})[0] == 200
    status, text, _ = request(team_app, "GET", route, headers={"Cookie": login(team_app, "访客", "127.0.0.71")})
    assert status == 404 and CHINESE.search(answer(text)["detail"])
    # The administrator sees everyone's history (issue 18).
    assert request(team_app, "GET", route, headers={"Cookie": login(team_app, "设计部", "127.0.0.71")})[0] == 200
    assert request(team_app, "GET", route)[0] in (401, 404)
    # The index (everyone's prompts) and the sharing lists are never files to serve, even to
    # the administrator; nor is an owner's own .shared list.
    index = team_app.outputs / "history.sqlite3"
    assert index.is_file()
    for path, user in ((index, "设计部"), (index, "bot"), (path.parent.parent / ".shared", "bot")):
        route = "/gradio_api/file=" + urllib.parse.quote(str(path))
        status, _, _ = request(team_app, "GET", route, headers={"Cookie": login(team_app, user, "127.0.0.71")})
        assert status == 404, (path.name, user)


def test_progress_of_another_users_job_shows_no_details(team_app):
    thread, result = in_thread(api, team_app, "/sdapi/v1/txt2img", {**LONG, "steps": 60}, "bot", "127.0.0.72")
    mine = theirs = None
    deadline = time.time() + 30
    while time.time() < deadline and not (mine and theirs):
        _, body, _ = request(team_app, "GET", "/sdapi/v1/progress", headers=basic("bot"), source="127.0.0.73")
        state = answer(body)["state"]
        if state["sampling_steps"]:
            mine = state
            _, body, _ = request(team_app, "GET", "/sdapi/v1/progress", headers=basic("访客"), source="127.0.0.73")
            theirs = answer(body)
        time.sleep(0.2)
    thread.join(120)
    assert mine and mine["sampling_steps"] == 60 and mine["job"] == "txt2img"
    assert theirs["state"]["job"] == "busy" and theirs["state"]["sampling_steps"] == 0
    assert theirs["current_image"] is None and theirs["progress"] == 0


def test_a_stop_from_a_direct_run_call_reaches_no_one_elses_job(team_app):
    """Direct /run/ calls have no page session: each gets a stop switch of its own."""
    owner = login(team_app, "bot", "127.0.0.74")
    other = login(team_app, "访客", "127.0.0.75")
    thread, result = in_thread(request, team_app, "POST", "/gradio_api/run/txt2img", run_payload("山水", 40, 256),
                               {**JSON, "Cookie": owner}, "127.0.0.74")
    time.sleep(2.0)
    for _ in range(3):
        request(team_app, "POST", "/gradio_api/run/stop", json.dumps({"data": []}), {**JSON, "Cookie": other}, "127.0.0.75")
        time.sleep(0.3)
    thread.join(120)
    status, body, _ = result["value"]
    assert status == 200 and answer(body)["data"][0], body[:300]  # images, not a cancelled job


def test_options_show_no_server_paths_and_shared_settings_are_for_administrators(team_app):
    _, body, _ = request(team_app, "GET", "/sdapi/v1/options", headers=basic("bot"))
    assert str(team_app.outputs) not in body.decode() and "/tmp" not in body.decode()
    current = answer(body)["sd_model_checkpoint"]
    # A1111's model switch: refused to a user who is not an administrator, done for one who is.
    status, text, _ = api(team_app, "/sdapi/v1/options", {"sd_model_checkpoint": current}, "bot")
    assert status == 403 and "管理员" in answer(text)["detail"]
    status, text, _ = api(team_app, "/sdapi/v1/txt2img",
                          {**SMALL, "override_settings": {"sd_model_checkpoint": current},
                           "override_settings_restore_afterwards": False}, "bot")
    assert status == 403
    assert api(team_app, "/sdapi/v1/options", {"sd_model_checkpoint": current}, "设计部")[0] == 200
    # The UI's model switch (a public Gradio endpoint) and the shared styles' save button.
    from gradio_client import Client

    client = Client(team_app.url, verbose=False, auth=("访客", ACCOUNTS["访客"]))
    with pytest.raises(Exception, match="管理员"):
        client.predict(current, api_name="/switch_model")
    admin = Client(team_app.url, verbose=False, auth=("设计部", ACCOUNTS["设计部"]))
    assert admin.predict(current, api_name="/switch_model")


def styles_save_index(app, cookie: str) -> int:
    """fn_index of the 风格预设 tab's 保存 button (a page-only event), read from /config."""
    _, body, _ = request(app, "GET", "/config", headers={"Cookie": cookie})
    config = answer(body)
    tables = {c["id"] for c in config["components"] if c.get("type") == "dataframe"
              and c.get("props", {}).get("headers") == ["名称", "提示词", "反向提示词"]}
    for index, dependency in enumerate(config["dependencies"]):
        if set(dependency.get("inputs", [])) & tables and len(dependency.get("outputs", [])) == 2:
            return dependency.get("id", index)
    raise AssertionError("no styles save event")


def queue_call(app, cookie: str, fn_index: int, data: list, source: str = "127.0.0.76") -> list:
    """What the page does: join the queue, read the result from the event stream."""
    session = f"s{time.time_ns()}"
    status, body, _ = request(app, "POST", "/gradio_api/queue/join",
                              json.dumps({"data": data, "fn_index": fn_index, "session_hash": session}),
                              {**JSON, "Cookie": cookie}, source)
    assert status == 200, body[:300]
    _, stream, _ = request(app, "GET", f"/gradio_api/queue/data?session_hash={session}", headers={"Cookie": cookie},
                           source=source)
    for line in stream.decode().splitlines():
        if line.startswith("data: ") and '"process_completed"' in line:
            return json.loads(line[6:])["output"]["data"]
    raise AssertionError(stream[-500:])


def test_only_an_administrator_may_rewrite_everyones_styles(team_app):
    """The attack: a user saves a style that injects a LoRA at weight 4 into everyone's prompts."""
    from extensions.styles import active_file, read_styles

    guest = login(team_app, "访客", "127.0.0.76")
    index = styles_save_index(team_app, guest)
    hostile = [["水墨", "{prompt}, <lora:danqing-demo-kohya:4>", ""]]
    status_text, _ = queue_call(team_app, guest, index, [{"headers": ["名称", "提示词", "反向提示词"], "data": hostile}])
    assert "管理员" in status_text
    styles = read_styles(active_file(team_app.outputs.parent / "styles.csv"))
    assert all("<lora:" not in prompt for prompt, _ in styles.values())
    admin = login(team_app, "设计部", "127.0.0.76")
    status_text, _ = queue_call(team_app, admin, index, [{"headers": ["名称", "提示词", "反向提示词"],
                                                          "data": [["水墨", "{prompt}，水墨画", ""]]}])
    assert "已保存" in status_text
    assert read_styles(team_app.outputs.parent / "styles.csv") == {"水墨": ("{prompt}，水墨画", "")}


# 8. X-Forwarded-For is believed only from the configured proxy -------------------------------------
def test_a_client_cannot_dodge_the_throttle_or_the_cap_by_writing_x_forwarded_for(team_app):
    source = "127.0.0.81"
    statuses = []
    for guess in range(8):
        headers = {**basic("bot", f"guess{guess}"), "X-Forwarded-For": f"10.9.8.{guess}"}
        statuses.append(request(team_app, "GET", "/sdapi/v1/samplers", headers=headers, source=source)[0])
    assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}, statuses
    running = [in_thread(request, team_app, "POST", "/sdapi/v1/txt2img", json.dumps(LONG),
                         {**JSON, **basic("访客"), "X-Forwarded-For": f"10.7.7.{i}"}, "127.0.0.82") for i in range(2)]
    time.sleep(1.0)
    status, body, _ = request(team_app, "POST", "/sdapi/v1/txt2img", json.dumps(SMALL),
                              {**JSON, **basic("访客"), "X-Forwarded-For": "10.7.7.99"}, source="127.0.0.82")
    assert status == 429 and answer(body)["error"] == "client_queue_full"
    for thread, _ in running:
        thread.join(120)


def test_behind_the_configured_proxy_each_visitor_is_the_address_the_proxy_saw(team_app):
    proxy = "127.0.0.9"
    # The visitor 7.7.7.7 guesses; writing another address in front of its own changes nothing.
    for guess in range(5):
        headers = {**basic("bot", f"guess{guess}"), "X-Forwarded-For": f"1.1.1.{guess}, 7.7.7.7"}
        assert request(team_app, "GET", "/sdapi/v1/samplers", headers=headers, source=proxy)[0] == 401
    locked = request(team_app, "GET", "/sdapi/v1/samplers", headers={**basic("bot"), "X-Forwarded-For": "7.7.7.7"},
                     source=proxy)
    assert locked[0] == 429
    # Another visitor behind the same proxy, and the proxy's own address, are not locked out.
    assert request(team_app, "GET", "/sdapi/v1/samplers", headers={**basic("bot"), "X-Forwarded-For": "8.8.8.8"},
                   source=proxy)[0] == 200
    assert request(team_app, "GET", "/sdapi/v1/samplers", headers=basic("bot"), source=proxy)[0] == 200


def test_forwarded_address_rules():
    from api.addresses import Addresses

    proxy = Addresses.for_bind("0.0.0.0", None, "127.0.0.9, 10.0.0.0/8", on_space=False)
    assert proxy.trusted_peer({"client": ("10.1.2.3", 1)}) and not proxy.trusted_peer({"client": ("192.168.1.5", 1)})
    assert proxy.client({}, "6.6.6.6, 7.7.7.7, 10.0.0.2") == "7.7.7.7"  # rightmost not a proxy
    assert proxy.client({}, "garbage, 7.7.7.7") == "7.7.7.7"
    assert proxy.client({}, "7.7.7.7, garbage") is None  # a garbled hop: believe nothing beyond it
    space = Addresses.for_bind("0.0.0.0", None, "", on_space=True)
    assert space.trusted_peer({"client": ("203.0.113.9", 1)})
    assert space.client({}, "1.2.3.4, 5.6.7.8") == "5.6.7.8"  # the entry HF's proxy appended, not the visitor's
    with pytest.raises(ValueError):
        Addresses.for_bind("0.0.0.0", None, "*", on_space=False)
    lan = Addresses.for_bind("0.0.0.0", None, "", on_space=False)
    assert lan.host_allowed("anything.lan") and not lan.trusted_peer({"client": ("127.0.0.1", 1)})
    loop = Addresses.for_bind("127.0.0.1", "studio.lan", "", on_space=False)
    assert loop.host_allowed("studio.lan:7860") and loop.host_allowed("[::1]:7860") and loop.host_allowed("10.0.0.1")
    assert not loop.host_allowed("evil.example") and not loop.host_allowed("")


# 9. The smaller ones ----------------------------------------------------------------------------
HOSTILE_BODIES = {
    "not UTF-8": (b'{"prompt": "\xff\xfe\xfd"}', "body_not_utf8"),
    "nested 100k deep": (b"[" * 100_000 + b"]" * 100_000, "json_too_deep"),
    "a 5000-digit number": (b'{"prompt": "x", "steps": ' + b"9" * 5000 + b"}", "number_too_long"),
    "a lone surrogate": (b'{"prompt": "\\ud800 \xe7\x8c\xab"}', "text_bad_unicode"),
}


@pytest.mark.parametrize("case", list(HOSTILE_BODIES))
def test_hostile_bodies_get_a_chinese_4xx_and_no_traceback(team_app, case):
    body, code = HOSTILE_BODIES[case]
    mark = team_app.log.stat().st_size
    cookie = login(team_app, "bot", "127.0.0.91")
    for path, headers in (("/sdapi/v1/txt2img", basic("bot")), ("/controlnet/detect", basic("bot")),
                          ("/gradio_api/call/v2/txt2img", {"Cookie": cookie}), ("/gradio_api/queue/join", {"Cookie": cookie}),
                          ("/gradio_api/run/txt2img", {"Cookie": cookie})):
        status, text, _ = request(team_app, "POST", path, body, {**JSON, **headers}, source="127.0.0.91")
        assert status == 400 and answer(text)["code"] == code and CHINESE.search(answer(text)["detail"]), (path, status, text[:200])
    time.sleep(0.3)
    no_tracebacks_since(team_app, mark)


def test_an_infinite_controlnet_threshold_is_a_chinese_4xx(team_app):
    mark = team_app.log.stat().st_size
    image = b64(png_with_text("x", (64, 64)))
    for value in ("inf", "-inf", "nan", "1e999"):
        unit = {"image": image, "module": "canny", "model": "demo-depth.safetensors", "threshold_a": value}
        payload = {**SMALL, "alwayson_scripts": {"controlnet": {"args": [unit]}}}
        status, text, _ = api(team_app, "/sdapi/v1/txt2img", payload, source="127.0.0.92")
        assert status == 422 and CHINESE.search(answer(text)["detail"]), (value, text[:200])
        status, text, _ = api(team_app, "/controlnet/detect", {"controlnet_module": "canny", "controlnet_input_images": [image],
                                                                "controlnet_threshold_b": value}, source="127.0.0.92")
        assert status == 422 and CHINESE.search(answer(text)["detail"]), (value, text[:200])
    no_tracebacks_since(team_app, mark)


def test_a_preview_decoder_that_cannot_load_falls_back_and_generation_works(team_app):
    """team_app asks for --preview taesd and its only decoder folder is broken."""
    from gradio_client import Client

    client = Client(team_app.url, verbose=False, auth=("bot", ACCOUNTS["bot"]))
    gallery, info = client.predict("猫", "", 2, 7.0, 64, 64, 5, 1, "DPM++ 2M Karras", [], "", 2, 0, False,
                                   api_name="/txt2img")
    assert gallery and json.loads(info)["all_seeds"] == [5]
    assert "failed to load; using the approximation" in team_app.log.read_text(encoding="utf-8", errors="replace")


def test_no_other_site_may_frame_the_studio(team_app, demo_app):
    for app, path in ((team_app, "/"), (team_app, "/sdapi/v1/samplers"), (demo_app, "/"), (demo_app, "/config")):
        _, _, headers = request(app, "GET", path)
        assert "frame-ancestors 'self'" in headers["content-security-policy"], path
        assert headers["x-frame-options"] == "SAMEORIGIN"


def test_one_users_saved_images_are_capped_with_a_clear_message(team_app):
    payload = {**SMALL, "width": 256, "height": 256, "steps": 2}
    answers = []
    for _ in range(12):
        status, text, _ = api(team_app, "/sdapi/v1/txt2img", payload, "实习生", "127.0.0.93")
        answers.append((status, answer(text)))
        if status != 200:
            break
    status, refused = answers[-1]
    assert status == 422 and refused["code"] == "outputs_quota_full" and "MB" in refused["detail"], answers[-1]
    assert len(answers) > 2  # a few images fit in the megabyte
    folder = next(p for p in team_app.outputs.rglob("实习生") if p.is_dir())
    assert sum(p.stat().st_size for p in folder.rglob("*.png")) < 2 * MIB
    assert api(team_app, "/sdapi/v1/txt2img", SMALL, "bot", "127.0.0.94")[0] == 200  # others go on


def image_file(format_name: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buffer, format=format_name)
    return buffer.getvalue()


@pytest.mark.parametrize("format_name", ["TGA", "ICO", "PCX", "PPM", "SGI", "IM", "DDS"])
def test_uploads_in_formats_designers_do_not_use_are_refused(team_app, format_name):
    data = b64(image_file(format_name))
    for path, payload in (("/sdapi/v1/extra-single-image", {"image": data, "upscaler_1": "RealESRGAN_x2plus-tiny.pth"}),
                          ("/sdapi/v1/png-info", {"image": data})):
        status, text, _ = api(team_app, path, payload, source="127.0.0.95")
        assert status == 422 and answer(text)["code"] == "image_unreadable" and "PNG" in answer(text)["detail"], text[:200]


@pytest.mark.parametrize("format_name", ["PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"])
def test_uploads_in_the_usual_formats_are_read(team_app, format_name):
    status, text, _ = api(team_app, "/sdapi/v1/png-info", {"image": b64(image_file(format_name))}, source="127.0.0.95")
    assert status == 200, text[:200]


def test_the_login_page_does_not_describe_the_api(team_app):
    _, page, _ = request(team_app, "GET", "/")
    for secret in (b"RealESRGAN", b"danqing-demo-kohya", b"demo-depth", b'"/txt2img"'):
        assert secret not in page, secret
    assert b'window.gradio_api_info = {"named_endpoints": {}, "unnamed_endpoints": {}};' in page
    assert request(team_app, "GET", "/gradio_api/info")[0] == 401
    _, page, _ = request(team_app, "GET", "/", headers={"Cookie": login(team_app, "bot")})
    assert b'"/txt2img"' in page and b"RealESRGAN" in page  # the logged-in page is whole


# The turns at the GPU, in-process --------------------------------------------------------------
def test_turns_go_round_the_addresses_and_a_stopped_waiter_leaves_at_once():
    from pipelines.errors import JobCancelled
    from pipelines.jobs import Turns

    turns, order = Turns(), []

    def job(address: str, name: str, hold: float = 0.1) -> None:
        turns.acquire(address)
        order.append(name)
        time.sleep(hold)
        turns.release()

    threads = [threading.Thread(target=job, args=("A", "A1", 0.4))]
    threads[0].start()
    time.sleep(0.05)
    for address, name in (("A", "A2"), ("A", "A3"), ("B", "B1"), ("C", "C1"), ("B", "B2")):
        threads.append(threading.Thread(target=job, args=(address, name)))
        threads[-1].start()
        time.sleep(0.03)
    # A waiter whose stop switch is set leaves the line within a poll, without its turn.
    stop = threading.Event()
    left: dict = {}

    def waiter() -> None:
        try:
            turns.acquire("D", stop)
        except JobCancelled:
            left["at"] = time.perf_counter()

    waiting = threading.Thread(target=waiter)
    waiting.start()
    time.sleep(0.05)
    stop.set()
    stopped = time.perf_counter()
    turns.notify()
    waiting.join(5)
    for thread in threads:
        thread.join(10)
    assert order == ["A1", "B1", "C1", "A2", "B2", "A3"], order
    assert left["at"] - stopped < 0.5
    # Re-entrant: a batch that holds the GPU runs its jobs inside without waiting for itself.
    turns.acquire("E")
    turns.acquire("E")
    turns.release()
    turns.release()
    assert turns.waiting() == {}
