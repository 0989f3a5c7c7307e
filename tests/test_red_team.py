"""The third red-team pass (issue 29): what a logged-in teammate can do to the server and to the
others' files, each finding against a really launched team server with two non-administrators
(alice, bob; 组长 administers), each check bounded in time and memory, asserting numbers:
memory growth, bytes on disk, seconds to an answer, status codes."""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
import threading
import time
import urllib.parse
import uuid
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from conftest import LaunchedApp

pytestmark = [pytest.mark.app, pytest.mark.slow]

ACCOUNTS = {"组长": "boss-pw", "alice": "alice-pw", "bob": "bob-pw"}
MIB = 2**20


# -- helpers ------------------------------------------------------------------------------------
def request(app, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None,
            source: str = "127.0.0.1", timeout: float = 120) -> tuple[int, bytes, http.client.HTTPMessage]:
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=timeout, source_address=(source, 0))
    try:
        conn.request(method, path, body=body.encode() if isinstance(body, str) else body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read(), response.headers
    finally:
        conn.close()


def basic(user: str, password: str | None = None) -> dict:
    token = base64.b64encode(f"{user}:{ACCOUNTS[user] if password is None else password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def api(app, method: str, path: str, payload=None, user: str = "bob", source: str = "127.0.0.1", timeout: float = 300):
    body = json.dumps(payload) if payload is not None else None
    status, raw, _ = request(app, method, path, body, {"Content-Type": "application/json", **basic(user)},
                             source=source, timeout=timeout)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def login(app, user: str, source: str = "127.0.0.1") -> str:
    form = urllib.parse.urlencode({"username": user, "password": ACCOUNTS[user]})
    status, _, headers = request(app, "POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded"},
                                 source=source)
    assert status == 200, status
    return "; ".join(c.split(";")[0] for c in headers.get_all("set-cookie"))


def gradio_call(app, api_name: str, data: list, cookie: str, timeout: float = 300) -> tuple[int, str]:
    """A Gradio API call as a logged-in page session: POST /gradio_api/call/<name>, then its
    event stream. (status of the POST, the stream's text; "" when refused)."""
    status, body, _ = request(app, "POST", f"/gradio_api/call/{api_name}", json.dumps({"data": data}),
                              {"Content-Type": "application/json", "Cookie": cookie}, timeout=timeout)
    if status != 200:
        return status, body.decode("utf-8", "replace")
    event = json.loads(body)["event_id"]
    _, stream, _ = request(app, "GET", f"/gradio_api/call/{api_name}/{event}", headers={"Cookie": cookie},
                           timeout=timeout)
    lines = []
    for line in stream.decode("utf-8", "replace").splitlines():  # the data lines' JSON, decoded
        if line.startswith("data: "):
            try:
                line = "data: " + json.dumps(json.loads(line[6:]), ensure_ascii=False)
            except ValueError:
                pass
        lines.append(line)
    return status, "\n".join(lines)


def rss_mb(app) -> float:
    with open(f"/proc/{app.proc.pid}/status") as status:
        return int(re.search(r"VmRSS:\s+(\d+)", status.read()).group(1)) / 1024


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def png(size=(64, 64), color=(30, 60, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def red_app(demo_models, demo_cache, tmp_path_factory):
    work = tmp_path_factory.mktemp("red-team")
    accounts = ",".join(f"{u}:{p}" for u, p in ACCOUNTS.items())
    app = LaunchedApp(["--demo", "--api", "--auth", accounts, "--preview-every", "0", "--login-window", "30",
                       "--max-train-steps", "40", "--train-slice-steps", "3", "--client-queue-limit", "8"],
                      demo_cache, work / "outputs")
    app.models = work / "models"
    yield app
    app.stop()


# 1. The canvas route ----------------------------------------------------------------------------
def editor_id(app, cookie: str) -> int:
    status, body, _ = request(app, "GET", "/config", headers={"Cookie": cookie})
    assert status == 200
    config = json.loads(body)
    return next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "inpaint-editor")


def blob(app, cookie: str, component: int, fields: dict, data: bytes) -> int:
    boundary = uuid.uuid4().hex
    parts = []
    for key, value in {"session_hash": "s" + uuid.uuid4().hex[:10], "component_id": str(component),
                       "fn_name": "accept_blobs", **fields}.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="blob"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    status, _, _ = request(app, "POST", "/gradio_api/component_server", body,
                           {"Content-Type": f"multipart/form-data; boundary={boundary}", "Cookie": cookie}, timeout=60)
    return status


def test_the_canvas_route_is_bounded_and_memory_stays_flat(red_app):
    """Gradio's ImageEditor route allocated ``index + 1`` entries from a form field and kept every
    piece forever: a huge index is refused, and many pieces keep memory flat."""
    cookie = login(red_app, "bob")
    editor = editor_id(red_app, cookie)
    before = rss_mb(red_app)
    assert blob(red_app, cookie, editor, {"type": "layer", "index": str(10**8), "id": "big"}, b"x" * 400) == 400
    assert blob(red_app, cookie, editor, {"type": "weird", "index": "0", "id": "x"}, b"x") == 400
    piece = b"\0" * (2 * MIB)
    statuses = [blob(red_app, cookie, editor, {"type": "layer", "index": "0", "id": f"c{i}"}, piece) for i in range(40)]
    assert set(statuses) == {200}
    time.sleep(1)
    grown = rss_mb(red_app) - before
    # 40 canvases of 2 MB were sent; at most 4 per client stay (8 MB), whatever comes next.
    assert grown < 60, f"memory grew by {grown:.0f} MB"
    assert request(red_app, "GET", "/config", headers={"Cookie": cookie}, timeout=10)[0] == 200


# 2. Another user's files named as inputs --------------------------------------------------------
def test_a_teammates_files_cannot_be_named_as_inputs(red_app):
    """alice's picture, its saved input and mask, and her caption file, named by bob as inputs of
    /upscale and /train_read: 404 at once, nothing copied; his own picture works."""
    status, body = api(red_app, "POST", "/sdapi/v1/img2img", {
        "init_images": [b64(png())], "mask": b64(png(color=(255, 255, 255))), "prompt": "alice 的图", "steps": 1,
        "width": 64, "height": 64, "denoising_strength": 0.5, "save_images": True}, user="alice")
    assert status == 200, body
    alice = red_app.outputs / "users" / "alice"
    pictures = sorted(alice.glob("*/*.png"))
    assert pictures
    note = alice / "training" / "私人" / "images" / "note.txt"
    note.parent.mkdir(parents=True)
    note.write_text("alice 的私人笔记", encoding="utf-8")
    cookie = login(red_app, "bob")
    for path in [*pictures, note]:
        file = {"path": str(path), "meta": {"_type": "gradio.FileData"}}
        started = time.monotonic()
        status, text = gradio_call(red_app, "upscale", [[file], "RealESRGAN_x2plus-tiny.pth", 2], cookie)
        assert status == 404 and time.monotonic() - started < 5, (path.name, status, text[:200])
        status, text = gradio_call(red_app, "train_read", ["偷看", [file]], cookie)
        assert status == 404, (path.name, status, text[:200])
    assert not (red_app.outputs / "users" / "bob" / "training" / "偷看").exists()
    # His own saved picture is an input he may name.
    api(red_app, "POST", "/sdapi/v1/txt2img", {"prompt": "bob 的图", "steps": 1, "width": 64, "height": 64}, user="bob")
    own = max((red_app.outputs / "users" / "bob").glob("*/*.png"), key=lambda p: p.stat().st_mtime)
    status, text = gradio_call(red_app, "upscale", [[{"path": str(own), "meta": {"_type": "gradio.FileData"}}],
                                                    "RealESRGAN_x2plus-tiny.pth", 2], cookie)
    assert status == 200 and "event: complete" in text, text[-300:]


# 3./4. The real size of a job, its budget, and giving way ---------------------------------------
def test_the_sizes_a_job_really_makes_are_checked_before_it_starts(red_app):
    cookie = login(red_app, "bob")
    # A 2048×64 draft of 8 would make 8 × 8192×256 and upscale them to 32768×1024: refused,
    # worded, at once.
    payload = {"prompt": "山水", "width": 2048, "height": 64, "num_images_per_prompt": 8, "draft": True}
    from gradio_client import Client

    client = Client(red_app.url, auth=("bob", ACCOUNTS["bob"]), verbose=False)
    started = time.monotonic()
    with pytest.raises(Exception) as refused:
        client.predict(**payload, api_name="/txt2img")
    assert "快速草图" in str(refused.value) and time.monotonic() - started < 15
    # The A1111 API: n_iter × batch × size counted as one request's budget.
    started = time.monotonic()
    status, body = api(red_app, "POST", "/sdapi/v1/txt2img",
                       {"prompt": "x", "width": 1024, "height": 1024, "batch_size": 4, "n_iter": 64, "steps": 1})
    assert status == 422 and body["code"] == "request_too_large" and time.monotonic() - started < 5
    # An inpainting of a 6000×6000 picture into 8 images: refused before any work.
    big = io.BytesIO()
    Image.new("RGB", (6000, 6000), (10, 10, 10)).save(big, format="PNG")
    started = time.monotonic()
    status, body = api(red_app, "POST", "/sdapi/v1/img2img", {
        "init_images": [b64(big.getvalue())], "mask": b64(png((6000, 6000), (255, 255, 255))), "prompt": "x",
        "steps": 1, "width": 64, "height": 64, "batch_size": 8, "inpaint_full_res": False})
    assert status == 422 and body["code"] == "request_too_large" and time.monotonic() - started < 30, body
    # /upscale: the same picture listed twenty times is refused by count.
    own = max((red_app.outputs / "users" / "bob").glob("*/*.png"), key=lambda p: p.stat().st_mtime, default=None)
    if own is not None:
        file = {"path": str(own), "meta": {"_type": "gradio.FileData"}}
        status, text = gradio_call(red_app, "upscale", [[file] * 20, "RealESRGAN_x2plus-tiny.pth", 2], cookie)
        assert "event: error" in text and "一次最多放大" in text, text[:300]


def test_a_long_a1111_request_gives_way_to_a_teammate(red_app):
    """alice's n_iter=12 holds the GPU between batches no more: bob's one job, sent after her
    first batch began, is answered long before her request ends."""
    times = {}

    def alice():
        started = time.monotonic()
        api(red_app, "POST", "/sdapi/v1/txt2img", {"prompt": "a", "steps": 6, "width": 64, "height": 64, "n_iter": 12},
            user="alice", source="127.0.0.21")
        times["alice"] = time.monotonic() - started

    worker = threading.Thread(target=alice)
    worker.start()
    time.sleep(1.5)
    started = time.monotonic()
    status, _ = api(red_app, "POST", "/sdapi/v1/txt2img", {"prompt": "b", "steps": 6, "width": 64, "height": 64},
                    user="bob", source="127.0.0.22")
    times["bob"] = time.monotonic() - started
    worker.join(300)
    assert status == 200
    assert times["bob"] < times["alice"] / 3, times


# 5. Training belongs to its user, and runs take turns -------------------------------------------
def training_files(folder: Path, count: int = 3) -> list:
    from gradio_client import handle_file

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        path = folder / f"p{i}.png"
        picture = Image.new("RGB", (96, 80), (30, 60, 200))
        picture.paste((220, 40, 40), (10 + 10 * i, 10, 50 + 10 * i, 50))
        picture.save(path)
        files.append(handle_file(str(path)))
    return files


KNOBS = dict(preset="fast", epochs=0, repeats=1, buckets=False, rank=2, alpha=2, learning_rate=1e-4,
             text_encoder_lr=5e-5, train_text_encoder=False, resolution=256, batch_size=1, seed=1, save_every=0,
             sample_every=0, sample_prompt="", min_snr_gamma=0, gradient_checkpointing=False)


def test_training_belongs_to_its_user_and_runs_take_turns(red_app, tmp_path):
    """alice and bob each train: pictures, checkpoint and LoRA in their own folders; bob's run,
    started while alice's runs, starts before hers ends (slices of 3 steps); bob's
    /sdapi/v1/interrupt leaves alice's run alone and alice's stops hers; a run over the
    operator's cap is refused in Chinese."""
    from gradio_client import Client

    clients = {u: Client(red_app.url, auth=(u, ACCOUNTS[u]), verbose=False) for u in ("alice", "bob")}
    for user, client in clients.items():
        rows = client.predict(name_value := f"{user}-风格", training_files(tmp_path / user), api_name="/train_read")
        assert rows and (red_app.outputs / "users" / user / "training" / name_value / "images").is_dir()
    refused = None
    try:
        clients["bob"].predict(f"bob-风格", "bob", {"headers": ["图片", "描述"], "data": [["p0.png", ""]]},
                               **{**KNOBS, "steps": 60}, api_name="/train")
    except Exception as exc:  # noqa: BLE001
        refused = str(exc)
    assert refused and "40 步以内" in refused
    jobs = {}

    def run(user: str, steps: int, resolution: int):
        table = {"headers": ["图片", "描述"], "data": [[f"p{i}.png", "红色方块"] for i in range(3)]}
        job = clients[user].submit(f"{user}-风格", user, table, **{**KNOBS, "steps": steps, "resolution": resolution},
                                   api_name="/train")
        jobs[user] = job

    run("alice", 40, 512)  # the long run (slower steps), at the operator's cap
    time.sleep(4)
    run("bob", 10, 256)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not jobs["bob"].done():
        time.sleep(0.5)
    assert jobs["bob"].done() and not jobs["alice"].done(), "bob's short run waited for alice's whole run"
    assert "训练完成" in jobs["bob"].result()[0], jobs["bob"].result()[0]
    assert (red_app.models / "lora" / "bob" / "bob-风格.safetensors").is_file()
    # bob's interrupt leaves alice's run running; hers stops it within seconds.
    assert api(red_app, "POST", "/sdapi/v1/interrupt", {}, user="bob")[0] == 200
    time.sleep(2)
    assert not jobs["alice"].done()
    started = time.monotonic()
    assert api(red_app, "POST", "/sdapi/v1/interrupt", {}, user="alice")[0] == 200
    while not jobs["alice"].done() and time.monotonic() - started < 30:
        time.sleep(0.2)
    assert jobs["alice"].done() and time.monotonic() - started < 30
    assert not (red_app.models / "lora" / "alice" / "alice-风格.safetensors").exists()  # stopped, not finished
    assert (red_app.outputs / "users" / "alice" / "training" / "alice-风格" / "state.pt").is_file()
    assert not (red_app.models / "lora" / "alice-风格.safetensors").exists()


# 6. Zip uploads ----------------------------------------------------------------------------------
def test_a_zip_that_expands_is_refused_before_writing_and_leaves_nothing(red_app, tmp_path):
    from gradio_client import Client, handle_file

    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(120):  # 120 MiB of zeros in ~120 KB, each member exactly 1 MiB
            zf.writestr(f"p{i}.png", b"\0" * MIB)
    assert archive.stat().st_size < MIB
    client = Client(red_app.url, auth=("bob", ACCOUNTS["bob"]), verbose=False)
    started = time.monotonic()
    with pytest.raises(Exception) as refused:
        client.predict("炸弹", [handle_file(str(archive))], api_name="/train_read")
    assert "压缩" in str(refused.value) and time.monotonic() - started < 30
    assert folder_bytes(red_app.outputs / "users" / "bob" / "training") < MIB


# 7./8. Logins --------------------------------------------------------------------------------------
def test_a_teammate_cannot_reset_the_throttle_for_the_administrators_name(red_app):
    source = "127.0.0.77"
    statuses = []
    for round_ in range(4):
        for _ in range(2):
            statuses.append(request(red_app, "GET", "/sdapi/v1/samplers", headers=basic("组长", "guess"),
                                    source=source)[0])
        assert request(red_app, "GET", "/sdapi/v1/samplers", headers=basic("bob"), source=source)[0] == 200
    assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}, statuses
    # The right password for that name is refused too until the window passes; bob still gets in.
    assert request(red_app, "GET", "/sdapi/v1/samplers", headers=basic("组长"), source=source)[0] == 429
    assert request(red_app, "GET", "/sdapi/v1/samplers", headers=basic("bob"), source=source)[0] == 200


# 9. Card text -------------------------------------------------------------------------------------
def test_card_text_never_becomes_live_html(red_app):
    from pipelines.formats.cards import read_card

    from ui.common import plain

    lora = red_app.models / "lora"
    lora.mkdir(parents=True, exist_ok=True)
    (lora / "卡片.json").write_text(json.dumps({"description": "好看 &lt;img src=http://10.0.0.1/track&gt; &amp;lt;b&amp;gt;",
                                                "activation text": "<img src=x>, 墨"}), encoding="utf-8")
    (lora / "卡片.safetensors").write_bytes(b"")
    card = read_card(lora / "卡片.safetensors")
    shown = plain(card["description"]) + " " + " ".join(plain(w) for w in card["trigger_words"])
    assert "<" not in shown and "img src" not in card["description"]


# 10. Downloads -----------------------------------------------------------------------------------
def test_only_who_may_download_asks_the_hub_or_sees_the_downloads(red_app):
    for path in ("/danqing/v1/downloads/files?source=huggingface&repo=someone/x", "/danqing/v1/downloads"):
        status, body = api(red_app, "GET", path, user="bob")
        assert status == 403 and "管理员" in body["detail"], (path, status, body)
    assert api(red_app, "GET", "/danqing/v1/downloads", user="组长")[0] == 200


# 4. (quota) and 8. Credentials from a users file -----------------------------------------------
@pytest.fixture(scope="module")
def hashed_app(demo_models, demo_cache, tmp_path_factory):
    """A team server whose accounts are a users file (salted scrypt hashes) and whose users may
    keep 1 MB of pictures each."""
    from api.accounts import add_user

    work = tmp_path_factory.mktemp("hashed")
    users = work / "users.txt"
    for user, password in ACCOUNTS.items():
        add_user(users, user, password)
    app = LaunchedApp(["--demo", "--api", "--users", str(users), "--preview-every", "0", "--max-user-outputs-mb", "1"],
                      demo_cache, work / "outputs")
    yield app
    app.stop()


def test_one_request_never_writes_far_past_the_quota(hashed_app):
    """With 1 MB each, one job of 8 pictures (one batch: the quota was checked only before a job)
    is stopped at the picture that fills the quota: the bytes on disk stay within the quota and
    one picture."""
    status, body = api(hashed_app, "POST", "/sdapi/v1/txt2img",
                       {"prompt": "噪声", "steps": 1, "width": 384, "height": 384, "batch_size": 8})
    kept = folder_bytes(hashed_app.outputs / "users" / "bob")
    one = max(p.stat().st_size for p in (hashed_app.outputs / "users" / "bob").rglob("*.png"))
    assert status == 422 and body["code"] == "outputs_quota_full", (status, body)
    assert kept <= MIB + one, f"{kept} bytes kept"
    assert len(list((hashed_app.outputs / "users" / "bob").rglob("*.png"))) < 8


def test_verified_credentials_cost_no_scrypt_per_request(hashed_app):
    """Eight clients polling with valid Basic credentials (scrypt-hashed accounts): another
    user's requests answer about as fast as on an idle server."""
    def median_latency(count: int = 15) -> float:
        times = []
        for _ in range(count):
            started = time.perf_counter()
            assert request(hashed_app, "GET", "/sdapi/v1/samplers", headers=basic("alice"), source="127.0.0.91")[0] == 200
            times.append(time.perf_counter() - started)
        return sorted(times)[len(times) // 2]

    idle = median_latency()
    stop = threading.Event()

    def poll(n: int) -> None:
        while not stop.is_set():
            request(hashed_app, "GET", "/sdapi/v1/progress", headers=basic("bob"), source=f"127.0.0.{100 + n}")

    pollers = [threading.Thread(target=poll, args=(n,), daemon=True) for n in range(8)]
    for thread in pollers:
        thread.start()
    time.sleep(1)
    try:
        busy = median_latency()
    finally:
        stop.set()
        for thread in pollers:
            thread.join(10)
    assert busy < idle + 0.08, f"idle {idle * 1000:.0f} ms, with pollers {busy * 1000:.0f} ms"
