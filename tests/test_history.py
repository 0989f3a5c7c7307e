"""历史 (issue 18): the SQLite index of saved images — Chinese substring search, filters, paging,
each user's own images kept apart, the team gallery, trash and restore — and the index rebuilt
from the PNGs when it is deleted, corrupt or stale."""

import os
import sqlite3
import time
from dataclasses import replace

import pytest
from PIL import Image

from conftest import make_studio
from pipelines.errors import DanqingError
from pipelines.formats.pnginfo import format_parameters
from pipelines.history import History
from pipelines.outputs import OutputWriter
from pipelines.team import Team


def params(prompt, seed, model="danqing-demo-zh", sampler="Euler a", negative="模糊", **extra):
    fields = {"Steps": 20, "Sampler": sampler, "CFG scale": 7, "Seed": seed, "Size": "64x48", "Model": model, **extra}
    return format_parameters(prompt, negative, fields)


def save(outputs, prompt, seed, user="", **kw):
    image = Image.new("RGB", (64, 48), (seed % 255, 80, 120))
    return outputs.save(image, params(prompt, seed, **kw), seed, user=user)


@pytest.fixture()
def team(demo_models, tmp_path):
    """A studio whose outputs hold images of 小王, 小李 and the administrator 组长."""
    studio = make_studio(demo_models, tmp_path / "outputs")
    studio.team = Team(admins=frozenset({"组长"}), logins=True, several=True)
    out = studio.outputs
    made = {
        "panda": save(out, "竹林里的大熊猫，水墨画", 101, "小王"),
        "cat": save(out, "窗台上的橘猫", 102, "小王", sampler="DPM++ 2M Karras"),
        "lora": save(out, "<lora:ink:0.8> 山水", 103, "小王", model="danqing-demo-st", **{"Lora hashes": '"ink: abc"'}),
        "img2img": save(out, "熊猫 玩具", 104, "小王", **{"Denoising strength": 0.5}),
        "other": save(out, "大熊猫宝宝", 201, "小李"),
    }
    out.save(Image.new("RGB", (8, 8)), "control map: canny", 101, suffix="-canny-map", user="小王", generated=False)
    return studio, made


def ids(page):
    return [e.prompt for e in page.entries]


def test_chinese_substrings_seeds_filters_and_pages(team):
    studio, _ = team
    assert ids(studio.history("小王", text="熊猫")) == ["熊猫 玩具", "竹林里的大熊猫，水墨画"]
    assert ids(studio.history("小王", text="大熊猫")) == ["竹林里的大熊猫，水墨画"]  # not 小李's
    assert ids(studio.history("小王", text="熊猫 水墨")) == ["竹林里的大熊猫，水墨画"]  # every word
    assert ids(studio.history("小王", text="102")) == ["窗台上的橘猫"]  # a seed
    assert ids(studio.history("小王", text="ink")) == ["<lora:ink:0.8> 山水"]  # a LoRA
    assert ids(studio.history("小王", text="模糊")) != []  # the negative prompt is searched too
    assert ids(studio.history("小王", sampler="DPM++ 2M Karras")) == ["窗台上的橘猫"]
    assert ids(studio.history("小王", model="danqing-demo-st")) == ["<lora:ink:0.8> 山水"]
    assert ids(studio.history("小王", task="img2img")) == ["熊猫 玩具"]
    everything = studio.history("小王")
    assert everything.total == 4  # the control map is not a history entry
    first, second = studio.history("小王", limit=3), studio.history("小王", offset=3, limit=3)
    assert len(first.entries) == 3 and len(second.entries) == 1 and first.total == second.total == 4
    assert {e.id for e in first.entries} | {e.id for e in second.entries} == {e.id for e in everything.entries}
    assert studio.history("小王", day_from="2000-01-01", day_to="2999-01-01").total == 4
    assert studio.history("小王", day_from="2999-01-01").total == 0
    facets = studio.history_facets("小王")
    assert facets["model"] == ["danqing-demo-st", "danqing-demo-zh"] and "img2img" in facets["task"]
    with pytest.raises(DanqingError) as caught:
        studio.history("小王", day_from="昨天")
    assert caught.value.code == "history_bad_date"


def test_each_user_sees_only_their_own_the_team_what_is_shared_the_admin_everything(team):
    studio, made = team
    assert ids(studio.history("小李")) == ["大熊猫宝宝"]
    assert studio.history("组长", scope="all").total == 5
    for scope in ("all", "nonsense"):
        with pytest.raises(DanqingError) as caught:
            studio.history("小李", scope=scope)
        assert caught.value.code == "history_bad_scope"
    panda = studio.history("小王", text="竹林").entries[0]
    assert studio.history("小李", scope="team").total == 0
    assert not studio.may_read(str(made["panda"]), "小李")
    with pytest.raises(DanqingError):
        studio.history_entry(panda.id, "小李")
    for act in (studio.history_delete, studio.history_restore, lambda i, u: studio.history_share(i, u)):
        with pytest.raises(DanqingError) as caught:
            act(panda.id, "小李")
        assert caught.value.code == "history_not_found"  # the same answer as for no image at all
    studio.history_share(panda.id, "小王")
    assert ids(studio.history("小李", scope="team")) == ["竹林里的大熊猫，水墨画"]
    assert studio.may_read(str(made["panda"]), "小李") and not studio.may_read(str(made["panda"]), "")
    thumb = studio.history_thumbnail(studio.history_entry(panda.id, "小李"))
    assert thumb.suffix == ".webp" and studio.may_read(str(thumb), "小李")
    assert not studio.may_read(str(studio.history_thumbnail(studio.history_entry(
        studio.history("小王", text="橘猫").entries[0].id, "小王"))), "小李")
    assert studio.may_read(str(made["other"]), "组长")  # an administrator reads everyone's
    studio.team = replace(studio.team, gallery=True)  # --team-gallery: every image is the team's
    assert studio.history("小李", scope="team").total == 5 and studio.may_read(str(made["cat"]), "小李")


def test_delete_goes_to_the_trash_and_restore_brings_it_back(team):
    studio, made = team
    cat = studio.history("小王", text="橘猫").entries[0]
    studio.history_share(cat.id, "小王")
    trashed = studio.history_delete(cat.id, "小王")
    assert not made["cat"].exists() and trashed.is_file() and ".trash" in trashed.parts
    assert studio.history("小王", text="橘猫").total == 0
    assert ids(studio.history("小王", scope="trash")) == ["窗台上的橘猫"]
    assert studio.history("小李", scope="team").total == 0  # a deleted image leaves the team gallery
    with pytest.raises(DanqingError):
        studio.history_delete(cat.id, "小王")
    # A new image that day never takes the deleted one's number.
    newer = save(studio.outputs, "新的", 300, "小王")
    assert newer.name.split("-")[0] != made["cat"].name.split("-")[0]
    back = studio.history_restore(cat.id, "小王")
    assert back == made["cat"] and back.is_file() and studio.history("小王", text="橘猫").total == 1
    assert studio.history("小王", scope="trash").total == 0


def test_the_index_is_rebuilt_when_deleted_corrupt_or_stale(team):
    studio, made = team
    out = studio.outputs
    panda = studio.history("小王", text="竹林").entries[0]
    studio.history_share(panda.id, "小王")
    before = {e.path for e in studio.history("组长", scope="all").entries}
    # Deleted: every image comes back from its PNG, the shared flag from the owner's list.
    out.history.close()
    os.remove(out.history.path)
    out.history = History(out.root)
    assert {e.path for e in studio.history("组长", scope="all").entries} == before
    assert ids(studio.history("小李", scope="team")) == ["竹林里的大熊猫，水墨画"]
    # Corrupt: set aside, rebuilt.
    out.history.close()
    out.history.path.write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        if os.path.exists(f"{out.history.path}{suffix}"):
            os.remove(f"{out.history.path}{suffix}")
    out.history = History(out.root)
    assert {e.path for e in studio.history("组长", scope="all").entries} == before
    assert list(out.root.glob("history.sqlite3.corrupt-*"))
    # Stale: a PNG put there by hand, one deleted by hand, a half-written one.
    out.history.close()
    copied = made["other"].with_name("00099-555.png")
    copied.write_bytes(made["other"].read_bytes())
    made["img2img"].unlink()
    (made["panda"].parent / ".00100-1.png.part").write_bytes(b"\x89PNG half")
    (made["panda"].parent / "00101-1.png").write_bytes(b"\x89PNG truncated")
    out.history = History(out.root)
    paths = {e.path for e in studio.history("组长", scope="all").entries}
    assert copied.relative_to(out.root).as_posix() in paths
    assert made["img2img"].relative_to(out.root).as_posix() not in paths and len(paths) == len(before)
    db = sqlite3.connect(out.history.path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1


def test_a_save_is_indexed_at_once_and_written_whole(tmp_path):
    out = OutputWriter(tmp_path)
    path = save(out, "一只熊猫", 7)
    assert not list(tmp_path.rglob("*.part"))
    page = out.history.search([""], "熊猫")
    assert page.total == 1 and page.entries[0].path == path.relative_to(tmp_path).as_posix()
    assert page.entries[0].seed == 7 and page.entries[0].width == 64 and page.entries[0].task == "txt2img"


# Through a launched team server ---------------------------------------------------------------
TEAM = {"组长": "lead-pass", "小王": "wang-pass", "小李": "li-pass"}


def call(app, method, path, user=None, payload=None, timeout=120, cookie=None, source="127.0.0.1"):
    """(status, JSON or bytes) of one request as a TEAM user (HTTP Basic) or with a login
    cookie, from ``source`` (a loopback address: per-address turns and caps)."""
    import base64
    import http.client
    import json

    headers = {"Content-Type": "application/json"}
    if user:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{TEAM[user]}".encode()).decode()
    if cookie:
        headers["Cookie"] = cookie
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=timeout, source_address=(source, 0))
    try:
        conn.request(method, path, body=json.dumps(payload) if payload is not None else None, headers=headers)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(body)
    except ValueError:
        return response.status, body


def quoted(text):
    import urllib.parse

    return urllib.parse.quote(text)


def test_two_users_through_the_server_and_a_kill_minus_nine(demo_models, demo_cache, tmp_path):
    """Two designers on one server: each lists, searches and fetches only their own images; the
    wrong user is answered 404 on every route; sharing lets a teammate see one; the administrator
    sees all. Then the server is killed (-9) in the middle of a job and its index deleted: after a
    restart every saved image is back in the history, no half-written file carries an image's
    name, and the user whose job was cut off is told (once; nobody else is)."""
    import signal
    import threading

    from conftest import LaunchedApp
    from pipelines.demo import DEMO_MODEL

    outputs = tmp_path / "outputs"
    args = ["--models-dir", str(demo_models), "--model", DEMO_MODEL, "--offline", "--api",
            "--auth", ",".join(f"{u}:{p}" for u, p in TEAM.items())]
    app = LaunchedApp(args, demo_cache, outputs)
    try:
        small = {"width": 64, "height": 64, "steps": 1}
        for user, prompt in (("小王", "竹林里的大熊猫，水墨画"), ("小王", "窗台上的橘猫"), ("小李", "熊猫宝宝")):
            status, body = call(app, "POST", "/sdapi/v1/txt2img", user, {**small, "prompt": prompt})
            assert status == 200, body
        status, mine = call(app, "GET", "/danqing/v1/history?q=" + quoted("熊猫"), "小王")
        assert status == 200 and [r["prompt"] for r in mine["images"]] == ["竹林里的大熊猫，水墨画"]
        assert all("/" not in r["file"] for r in mine["images"])  # no server paths
        panda = mine["images"][0]["id"]
        status, theirs = call(app, "GET", "/danqing/v1/history", "小李")
        assert [r["prompt"] for r in theirs["images"]] == ["熊猫宝宝"]
        # The wrong user, every route: the same 404 as for no image, in Chinese.
        for method, route in (("GET", f"/danqing/v1/history/{panda}/image"), ("POST", f"/danqing/v1/history/{panda}/delete"),
                              ("POST", f"/danqing/v1/history/{panda}/restore"), ("POST", f"/danqing/v1/history/{panda}/share")):
            status, body = call(app, method, route, "小李")
            assert status == 404 and "找不到这张图片" in str(body), (route, body)
        status, body = call(app, "GET", "/danqing/v1/history?scope=all", "小李")
        assert status == 422 and "管理员" in str(body)
        assert call(app, "GET", f"/danqing/v1/history/{panda}/image", "小王")[0] == 200
        # Shared: the teammate sees it in the team view and may fetch it.
        assert call(app, "POST", f"/danqing/v1/history/{panda}/share", "小王")[0] == 200
        status, team = call(app, "GET", "/danqing/v1/history?scope=team", "小李")
        assert [r["prompt"] for r in team["images"]] == ["竹林里的大熊猫，水墨画"] and team["images"][0]["owner"] == "小王"
        assert call(app, "GET", f"/danqing/v1/history/{panda}/image", "小李")[0] == 200
        assert call(app, "GET", "/danqing/v1/history?scope=all", "组长")[1]["total"] == 3
        # Delete and restore, own images only.
        assert call(app, "POST", f"/danqing/v1/history/{panda}/delete", "小王")[0] == 200
        assert call(app, "GET", "/danqing/v1/history?q=" + quoted("竹林"), "小王")[1]["total"] == 0
        assert call(app, "GET", "/danqing/v1/history?scope=trash", "小王")[1]["total"] == 1
        assert call(app, "POST", f"/danqing/v1/history/{panda}/restore", "小王")[0] == 200
        assert call(app, "GET", "/danqing/v1/history?q=" + quoted("竹林"), "小王")[1]["total"] == 1
        assert call(app, "POST", f"/danqing/v1/history/{panda}/share", "小王")[0] == 200  # shared again

        # kill -9 while a long job runs (a batch of images: some saved, one in the making).
        def long_job():
            call(app, "POST", "/sdapi/v1/txt2img", "小李",
                 {"prompt": "长任务", "width": 128, "height": 128, "steps": 40, "n_iter": 20}, timeout=300)

        threading.Thread(target=long_job, daemon=True).start()
        deadline = time.time() + 120
        while time.time() < deadline and len(list(outputs.rglob("*长*"))) == 0:
            saved = [p for p in outputs.rglob("*.png") if "users" in p.parts]
            if len(saved) >= 5:
                break
            time.sleep(0.2)
        os.kill(app.proc.pid, signal.SIGKILL)
        app.proc.wait(timeout=30)
    finally:
        app.stop()
    on_disk = sorted(p for p in outputs.rglob("*.png") if ".thumbs" not in p.parts and ".trash" not in p.parts)
    assert len(on_disk) >= 5
    for suffix in ("", "-wal", "-shm"):
        (outputs / f"history.sqlite3{suffix}").unlink(missing_ok=True)
    app = LaunchedApp(args, demo_cache, outputs)
    try:
        everything = call(app, "GET", "/danqing/v1/history?scope=all&limit=200", "组长")[1]
        assert everything["total"] == len(on_disk)
        assert sum(r["prompt"] == "长任务" for r in everything["images"]) == len(on_disk) - 3
        for row in everything["images"]:
            assert call(app, "GET", f"/danqing/v1/history/{row['id']}/image", "组长")[0] == 200
        # The shared flag came back from the owner's list, with the index rebuilt from the files.
        team = call(app, "GET", "/danqing/v1/history?scope=team", "小李")[1]["images"]
        assert [r["prompt"] for r in team] == ["竹林里的大熊猫，水墨画"]
        # The job the kill cut off is reported to its user, once; the others had none.
        status, cut = call(app, "GET", "/danqing/v1/queue/unfinished", "小李")
        assert status == 200 and [j["kind"] for j in cut] == ["txt2img"], cut
        assert call(app, "GET", "/danqing/v1/queue/unfinished", "小李")[1] == []
        assert call(app, "GET", "/danqing/v1/queue/unfinished", "小王")[1] == []
    finally:
        app.stop()
