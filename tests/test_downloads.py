"""模型下载 (issue 16) against a real HTTP server on loopback that speaks HuggingFace's and
ModelScope's file routes (tests/hub_server.py): sizes before starting, resume after a dropped
connection, checksums, cancel, offline at once, and never a partial file under the final name."""

import hashlib
import os
import socket
import time

import pytest

from hub_server import Hub
from pipelines.demo import DEMO_MODEL
from pipelines.downloads import Downloads, list_files
from pipelines.errors import DanqingError
from pipelines.store import EngineSettings, ModelFolders, ModelStore


@pytest.fixture
def hub(monkeypatch):
    server = Hub()
    monkeypatch.setenv("HF_ENDPOINT", server.url)  # what a user in China sets for hf-mirror.com
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", server.url)
    yield server
    server.close()


@pytest.fixture
def folders(tmp_path):
    folders = ModelFolders(tmp_path / "models")
    folders.ensure()
    return folders


def payload(size: int, seed: int = 0) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32) + b"x" * (size % 32)


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".part" in p.name)


def test_one_file_from_the_mirror_arrives_whole_and_checked(hub, folders):
    data = payload(300_000)
    hub.repos["someone/ink-lora"] = {"ink.safetensors": data, "README.md": b"# ink"}
    sizes = {f.path: f.size for f in list_files("huggingface", "someone/ink-lora")}
    assert sizes == {"ink.safetensors": 300_000, "README.md": 5}  # shown before starting
    downloads = Downloads(folders)
    job = downloads.wait(downloads.start("huggingface", "someone/ink-lora", "lora", file="ink.safetensors").id)
    assert job.state == "done", job.error
    assert (folders.folder("lora") / "ink.safetensors").read_bytes() == data
    assert job.done_bytes == job.total_bytes == 300_000
    assert leftovers(folders.root) == []
    store = ModelStore(EngineSettings(models_dir=folders.root, device="cpu", demo=True, allow_download=False))
    assert "ink.safetensors" in store.folders.list_files("lora")
    with pytest.raises(DanqingError) as err:  # already there: not fetched again
        downloads.start("huggingface", "someone/ink-lora", "lora", file="ink.safetensors")
    assert err.value.code == "download_exists"


def test_a_dropped_connection_resumes_with_a_range_request(hub, folders):
    data = payload(500_000, seed=1)
    hub.repos["someone/big"] = {"big.safetensors": data}
    hub.drops["big.safetensors"] = [120_000, 90_000]  # two drops, then the rest
    downloads = Downloads(folders)
    job = downloads.wait(downloads.start("huggingface", "someone/big", "checkpoints", file="big.safetensors").id)
    assert job.state == "done", job.error
    assert (folders.folder("checkpoints") / "big.safetensors").read_bytes() == data
    ranges = [r for p, r in hub.ranges if p == "big.safetensors"]
    assert ranges == [None, "bytes=120000-", "bytes=210000-"]
    assert leftovers(folders.root) == []


def test_interrupted_for_good_keeps_the_part_and_a_later_start_resumes(hub, folders):
    data = payload(200_000, seed=2)
    hub.repos["someone/flaky"] = {"flaky.pt": data}
    hub.drops["flaky.pt"] = [10_000] * 5  # more drops than one attempt retries
    downloads = Downloads(folders)
    job = downloads.wait(downloads.start("huggingface", "someone/flaky", "embeddings", file="flaky.pt").id)
    assert job.state == "failed" and job.error["code"] == "download_interrupted"
    assert not (folders.folder("embeddings") / "flaky.pt").exists()  # never under the final name
    assert leftovers(folders.root) == ["flaky.pt.part"]
    hub.ranges.clear()
    job = downloads.wait(downloads.start("huggingface", "someone/flaky", "embeddings", file="flaky.pt").id)
    assert job.state == "done" and (folders.folder("embeddings") / "flaky.pt").read_bytes() == data
    assert hub.ranges == [("flaky.pt", "bytes=50000-")]  # only the rest was fetched


def test_a_wrong_checksum_leaves_nothing(hub, folders):
    hub.repos["someone/bad"] = {"bad.safetensors": payload(100_000, seed=3)}
    hub.wrong_sha.add("bad.safetensors")
    downloads = Downloads(folders)
    job = downloads.wait(downloads.start("huggingface", "someone/bad", "lora", file="bad.safetensors").id)
    assert job.state == "failed" and job.error["code"] == "download_checksum"
    assert list(folders.folder("lora").iterdir()) == []
    # A checksum the user typed (from the model's page) is checked too.
    hub.wrong_sha.clear()
    job = downloads.wait(downloads.start("huggingface", "someone/bad", "lora", file="bad.safetensors",
                                         sha256="0" * 64).id)
    assert job.error["code"] == "download_checksum" and list(folders.folder("lora").iterdir()) == []


def test_a_whole_repository_from_modelscope_becomes_a_model_folder(hub, folders, demo_models):
    source = demo_models / "checkpoints" / DEMO_MODEL
    hub.repos["PAI/tiny-zh"] = {p.relative_to(source).as_posix(): p.read_bytes() for p in source.rglob("*") if p.is_file()}
    hub.drops["unet/diffusion_pytorch_model.bin"] = [1000]
    downloads = Downloads(folders)
    job = downloads.wait(downloads.start("modelscope", "PAI/tiny-zh", "checkpoints").id)
    assert job.state == "done", job.error
    folder = folders.folder("checkpoints") / "tiny-zh"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == sorted(hub.repos["PAI/tiny-zh"])
    assert not any(p.name.startswith(".") for p in folders.folder("checkpoints").iterdir())
    store = ModelStore(EngineSettings(model="tiny-zh", models_dir=folders.root, device="cpu", demo=True, allow_download=False))
    assert store.choice("tiny-zh").kind == "folder"
    assert store.base().unet is not None  # it loads


def test_cancel_removes_the_part(hub, folders):
    hub.repos["someone/slow"] = {"slow.safetensors": payload(400_000, seed=4)}
    hub.slow.add("slow.safetensors")
    downloads = Downloads(folders)
    job = downloads.start("huggingface", "someone/slow", "lora", file="slow.safetensors")
    deadline = time.monotonic() + 10
    while job.done_bytes == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    downloads.cancel(job.id)
    job = downloads.wait(job.id)
    assert job.state == "cancelled" and 0 < job.done_bytes < 400_000
    assert list(folders.folder("lora").iterdir()) == []


def test_offline_says_so_at_once(monkeypatch, folders):
    with socket.socket() as s:  # a port nobody listens on: connection refused, like no network
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(DanqingError) as err:
        Downloads(folders).start("huggingface", "someone/x", "lora", file="x.safetensors")
    assert err.value.code == "download_offline" and time.monotonic() - started < 5
    with pytest.raises(DanqingError) as err:
        Downloads(folders, offline=True).start("huggingface", "someone/x", "lora", file="x.safetensors")
    assert err.value.code == "download_offline_mode"


def test_bad_requests_are_refused_before_any_traffic(hub, folders):
    downloads = Downloads(folders)
    hub.repos["someone/ok"] = {"ok.safetensors": b"123"}
    for args, code in (
        (("huggingface", "../etc", "lora"), "download_bad_repo"),
        (("ftp", "someone/ok", "lora"), "download_bad_source"),
        (("huggingface", "someone/ok", "outputs"), "download_bad_kind"),
        (("huggingface", "someone/missing", "lora"), "download_not_found"),
    ):
        with pytest.raises(DanqingError) as err:
            downloads.start(*args, file="ok.safetensors")
        assert err.value.code == code, args
    with pytest.raises(DanqingError) as err:
        downloads.start("huggingface", "someone/ok", "lora", file="nope.safetensors")
    assert err.value.code == "download_no_such_file"
    with pytest.raises(DanqingError) as err:
        downloads.start("huggingface", "someone/ok", "lora", file="ok.safetensors", sha256="xyz")
    assert err.value.code == "download_bad_sha256"
    assert os.listdir(folders.folder("lora")) == []


def test_the_download_api_of_a_launched_app(hub, tmp_path, demo_cache):
    """The download routes on a launched team app (HF_ENDPOINT set for it): the administrators'
    only (a guest's listing would make the server query the hub), errors as Chinese JSON, the
    file lands in the app's own models folder."""
    from conftest import LaunchedApp
    from test_sdapi import call

    data = payload(150_000, seed=5)
    hub.repos["someone/api-lora"] = {"api.safetensors": data}
    work = tmp_path / "work"
    work.mkdir()
    app = LaunchedApp(["--demo", "--api", "--auth", "管理:pw1,访客:pw2"], demo_cache, work / "outputs",
                      env={"HF_ENDPOINT": hub.url})
    try:
        admin, guest = ("管理", "pw1"), ("访客", "pw2")
        status, error = call(app, "/danqing/v1/downloads/files?source=huggingface&repo=someone/api-lora", auth=guest)
        assert status == 403 and "管理员" in error["detail"]
        status, files = call(app, "/danqing/v1/downloads/files?source=huggingface&repo=someone/api-lora", auth=admin)
        assert status == 200 and files[0]["size"] == 150_000
        body = {"source": "huggingface", "repo": "someone/api-lora", "kind": "lora", "file": "api.safetensors"}
        status, error = call(app, "/danqing/v1/downloads", body, auth=guest)
        assert status == 403 and "管理员" in error["detail"]
        status, error = call(app, "/danqing/v1/downloads", {**body, "repo": "不是仓库"}, auth=admin)
        assert status == 422 and error["code"] == "download_bad_repo" and "仓库名不合法" in error["detail"]
        status, row = call(app, "/danqing/v1/downloads", body, auth=admin)
        assert status == 200 and row["target"] == "api.safetensors"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = call(app, "/danqing/v1/downloads", auth=admin)[1]
            if rows[0]["state"] != "running" and rows[0]["state"] != "queued":
                break
            time.sleep(0.2)
        assert rows[0]["state"] == "done", rows
        assert (work / "models" / "lora" / "api.safetensors").read_bytes() == data
        status, error = call(app, "/danqing/v1/downloads/nope/cancel", {}, auth=admin)
        assert status == 422 and error["code"] == "download_unknown"
    finally:
        app.stop()


def test_every_suggested_model_names_a_source_a_valid_repository_and_a_folder_in_both_languages():
    from pipelines import downloads
    from strings import EN, ZH

    assert [s[2] for s in downloads.SUGGESTIONS][:4] == [
        "alibaba-pai/pai-diffusion-artist-large-zh", "IDEA-CCNL/Taiyi-Stable-Diffusion-1B-Chinese-v0.1",
        "Kwai-Kolors/Kolors-diffusers", "Tongyi-MAI/Z-Image-Turbo"]  # Chinese models first
    for name, source, repo, kind in downloads.SUGGESTIONS:
        downloads._check(source, repo)
        assert kind in downloads.KINDS
        assert ZH["download_suggestions"][name] and EN["download_suggestions"][name]
