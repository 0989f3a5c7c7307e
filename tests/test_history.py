"""历史 (issue 18): the SQLite index of saved images — Chinese substring search, filters, paging,
each user's own images kept apart, the team gallery, trash and restore — and the index rebuilt
from the PNGs when it is deleted, corrupt or stale."""

import os
import sqlite3

import pytest
from PIL import Image

from conftest import make_studio
from pipelines.errors import DanqingError
from pipelines.formats.pnginfo import format_parameters
from pipelines.history import History
from pipelines.outputs import OutputWriter


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
    studio.admins = frozenset({"组长"})
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
    studio.team_gallery = True  # --team-gallery: every image is the team's
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
