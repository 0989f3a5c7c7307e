"""模型下载: one file (or a whole diffusers repository) from HuggingFace — the mirror in
``HF_ENDPOINT`` honoured, hf-mirror.com works — or ModelScope, into ``models/<kind>/``.

1. ``plan``: the repository's file list with sizes and SHA-256 (HF's ``/api/models/<id>/tree``,
   ModelScope's ``/api/v1/models/<id>/repo/files``), so the size is shown before starting.
2. ``Downloads.start``: one worker thread per download; bytes go to ``<name>.part`` beside the
   final name, resumed with an HTTP ``Range`` after a dropped connection (a few tries, then
   left for a later resume), checked against the SHA-256 and only then renamed; a cancel or a
   wrong checksum deletes the part file. Nothing ever sits half-written under the final name.
3. Offline it fails at once: a short connect timeout, and ``--offline`` refuses before trying.

Plain ``urllib`` over HTTP(S): the two services' file routes are simple, and the same code
serves both (huggingface_hub knows no ModelScope, no cancel, no byte progress per job).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelError, ParamError
from .store.folders import MODEL_KINDS, ModelFolders

log = logging.getLogger(__name__)

SOURCES = ("huggingface", "hf_mirror", "modelscope")
HF_ROUTES = ("huggingface", "hf_mirror")  # HuggingFace's API, at the hub itself or at a mirror
# What "cannot reach" says, by source: each suggests the other two.
OFFLINE_CODES = {"huggingface": "download_offline", "hf_mirror": "download_offline_mirror",
                 "modelscope": "download_offline_modelscope"}
KINDS = ("checkpoints", "lora", "vae", "embeddings", "controlnet", "upscalers", "captioners", "translators", "prompters")
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
CONNECT_TIMEOUT = 8.0  # seconds (also between two reads): offline fails at once instead of hanging
CHUNK = 1 << 20
RETRIES = 4  # resumes after a dropped connection before the download is left for later
MAX_FILES = 200  # a whole repository, at most
# Files of a diffusers repository worth having (no training states, no other frameworks' weights).
REPO_ENDINGS = (".json", ".txt", ".safetensors", ".bin", ".model", ".spm")  # .spm: opus-mt tokenizers
# 常用模型: what a Chinese designer fetches first, Chinese models first — (name, source, repo, kind);
# the page's list fills the three fields from one pick (each still editable).
SUGGESTIONS = (
    ("pai_artist", "huggingface", "alibaba-pai/pai-diffusion-artist-large-zh", "checkpoints"),
    ("taiyi", "huggingface", "IDEA-CCNL/Taiyi-Stable-Diffusion-1B-Chinese-v0.1", "checkpoints"),
    ("kolors", "modelscope", "Kwai-Kolors/Kolors-diffusers", "checkpoints"),
    ("zimage_turbo", "modelscope", "Tongyi-MAI/Z-Image-Turbo", "checkpoints"),
    ("opus_mt", "hf_mirror", "Helsinki-NLP/opus-mt-zh-en", "translators"),
    ("qwen_prompter", "modelscope", "Qwen/Qwen2.5-0.5B-Instruct", "prompters"),
)
SKIP_IN_REPO = re.compile(r"(^|/)(\.|flax_|tf_|onnx|openvino)|\.(msgpack|h5|ckpt|onnx|pb)$")


def endpoint(source: str) -> str:
    if source == "huggingface":
        return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    if source == "hf_mirror":  # the mirror Chinese users reach (chosen on the page, no variable needed)
        return (os.environ.get("DANQING_HF_MIRROR") or "https://hf-mirror.com").rstrip("/")
    return (os.environ.get("MODELSCOPE_ENDPOINT") or os.environ.get("MODELSCOPE_DOMAIN")
            or "https://www.modelscope.cn").rstrip("/")


@dataclass(frozen=True)
class RemoteFile:
    path: str  # inside the repository
    size: int | None
    sha256: str | None


def _check(source: str, repo: str) -> None:
    if source not in SOURCES:
        raise ParamError("download_bad_source", value=str(source)[:40])
    if not isinstance(repo, str) or not REPO_ID.match(repo):
        raise ParamError("download_bad_repo", value=str(repo)[:100])


def _open(url: str, headers: dict | None = None, timeout: float = CONNECT_TIMEOUT):
    request = urllib.request.Request(url, headers={"User-Agent": "danqing", **(headers or {})})
    return urllib.request.urlopen(request, timeout=timeout)


def _offline(source: str, name: str, url: str) -> ModelError:
    return ModelError(OFFLINE_CODES.get(source, "download_offline"), name=name, host=urllib.parse.urlsplit(url).netloc)


def _get_json(url: str, label: str, source: str = "huggingface"):
    try:
        with _open(url) as response:
            return json.loads(response.read(8 << 20))
    except urllib.error.HTTPError as exc:
        code = "download_not_found" if exc.code in (401, 403, 404) else "download_failed"
        raise ModelError(code, name=label, status=exc.code) from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        log.info("cannot reach %s: %s", url, exc)
        raise _offline(source, label, url) from None
    except ValueError:
        raise ModelError("download_failed", name=label, status="json") from None


def list_files(source: str, repo: str, revision: str = "main") -> list[RemoteFile]:
    """Every file of the repository with its size and SHA-256 (when the service says)."""
    _check(source, repo)
    base = endpoint(source)
    if source in HF_ROUTES:
        data = _get_json(f"{base}/api/models/{repo}/tree/{urllib.parse.quote(revision)}?recursive=true", repo, source)
        rows = [RemoteFile(d["path"], d.get("size"), (d.get("lfs") or {}).get("oid"))
                for d in data if isinstance(d, dict) and d.get("type") == "file" and isinstance(d.get("path"), str)]
    else:
        query = urllib.parse.urlencode({"Revision": "master" if revision == "main" else revision, "Recursive": "true"})
        data = _get_json(f"{base}/api/v1/models/{repo}/repo/files?{query}", repo, source)
        files = ((data or {}).get("Data") or {}).get("Files") or []
        rows = [RemoteFile(d["Path"], d.get("Size"), d.get("Sha256") or None)
                for d in files if isinstance(d, dict) and d.get("Type", "blob") == "blob" and isinstance(d.get("Path"), str)]
    return [r for r in rows if _safe_path(r.path)]


def file_url(source: str, repo: str, path: str, revision: str = "main") -> str:
    base = endpoint(source)
    quoted = urllib.parse.quote(path)
    if source in HF_ROUTES:
        return f"{base}/{repo}/resolve/{urllib.parse.quote(revision)}/{quoted}"
    query = urllib.parse.urlencode({"Revision": "master" if revision == "main" else revision, "FilePath": path})
    return f"{base}/api/v1/models/{repo}/repo?{query}"


def _safe_path(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and len(path) <= 255 and "\\" not in path and ":" not in path and "\x00" not in path \
        and not path.startswith("/") and all(p not in ("", ".", "..") for p in parts)


# 2. Jobs -------------------------------------------------------------------------------------
@dataclass
class Download:
    id: str
    source: str
    repo: str
    kind: str
    files: list[RemoteFile]
    target: str  # the name under models/<kind>/ (a file, or a folder for a whole repository)
    user: str
    state: str = "queued"  # queued | running | done | failed | cancelled
    done_bytes: int = 0
    total_bytes: int | None = None
    error: dict | None = None  # {"code": ..., "fields": {...}}
    started: float = field(default_factory=time.time)
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def row(self) -> dict:
        return {"id": self.id, "source": self.source, "repo": self.repo, "kind": self.kind, "target": self.target,
                "files": [f.path for f in self.files], "state": self.state, "done_bytes": self.done_bytes,
                "total_bytes": self.total_bytes, "error": self.error, "user": self.user}


class Downloads:
    """The download jobs of one app. ``offline``: refuse at once (``--offline``)."""

    def __init__(self, folders: ModelFolders, offline: bool = False) -> None:
        self.folders = folders
        self.offline = offline
        self._jobs: dict[str, Download] = {}
        self._lock = threading.Lock()

    def files(self, source: str, repo: str) -> list[RemoteFile]:
        """Every file of the repository, with sizes (refused at once with ``--offline``)."""
        if self.offline:
            raise ModelError("download_offline_mode")
        return list_files(source, repo)

    def plan(self, source: str, repo: str, file: str | None = None) -> list[RemoteFile]:
        """What ``start`` would fetch: one file, or the useful files of a whole repository."""
        rows = self.files(source, repo)
        if file:
            wanted = [r for r in rows if r.path == file]
            if not wanted:
                raise ModelError("download_no_such_file", name=repo, file=str(file)[:120])
            return wanted
        rows = [r for r in rows if r.path.endswith(REPO_ENDINGS) and not SKIP_IN_REPO.search(r.path)]
        if not rows:
            raise ModelError("download_not_found", name=repo, status=404)
        return rows[:MAX_FILES]

    def start(self, source: str, repo: str, kind: str, file: str | None = None, sha256: str | None = None,
              user: str = "") -> Download:
        if kind not in KINDS:
            raise ParamError("download_bad_kind", value=str(kind)[:40])
        if sha256 is not None and sha256 != "" and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
            raise ParamError("download_bad_sha256")
        files = self.plan(source, repo, file)
        if file and sha256:
            files = [RemoteFile(files[0].path, files[0].size, sha256.lower())]
        # One file keeps its own name; a repository becomes a folder named after it.
        target = Path(file).name if file else repo.split("/")[-1]
        if file and not target.lower().endswith(MODEL_KINDS[kind][1] or ("",)):
            raise ParamError("download_wrong_kind", file=target, kind=kind)
        final = self.folders.folder(kind) / target
        with self._lock:
            if any(j.kind == kind and j.target == target and j.state in ("queued", "running") for j in self._jobs.values()):
                raise ParamError("download_running", name=target)
            if final.exists():
                raise ParamError("download_exists", name=target, kind=kind)
            sizes = [f.size for f in files]
            job = Download(uuid.uuid4().hex[:12], source, repo, kind, files, target, user,
                           total_bytes=sum(sizes) if all(isinstance(s, int) for s in sizes) else None)
            self._jobs[job.id] = job
        threading.Thread(target=self._run, args=(job,), name=f"download-{job.id}", daemon=True).start()
        return job

    def cancel(self, job_id: str, user: str = "", admin: bool = True) -> Download:
        job = self._jobs.get(job_id)
        if job is None or (not admin and job.user != user):
            raise ParamError("download_unknown", id=str(job_id)[:20])
        job.cancel.set()
        return job

    def jobs(self) -> list[Download]:
        return sorted(self._jobs.values(), key=lambda j: j.started, reverse=True)

    def get(self, job_id: str) -> Download | None:
        return self._jobs.get(job_id)

    def wait(self, job_id: str, timeout: float = 60) -> Download:
        """Block until the job ends (tests, scripts)."""
        deadline = time.monotonic() + timeout
        job = self._jobs[job_id]
        while job.state in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.05)
        return job

    # -- the worker ---------------------------------------------------------------------------
    def _run(self, job: Download) -> None:
        job.state = "running"
        folder = self.folders.folder(job.kind)
        folder.mkdir(parents=True, exist_ok=True)
        single = len(job.files) == 1 and Path(job.target).name == Path(job.files[0].path).name
        staging = folder / f".{job.target}.partdir" if not single else None
        try:
            done_before = 0
            for remote in job.files:
                if single:
                    final = folder / job.target
                else:
                    final = staging / remote.path
                    final.parent.mkdir(parents=True, exist_ok=True)
                if final.exists():  # a repository resumed: files already finished stay
                    done_before += final.stat().st_size
                    continue
                self._fetch(job, remote, final, done_before)
                done_before += final.stat().st_size
            if staging is not None:
                staging.rename(folder / job.target)  # the folder appears whole, or not at all
            job.done_bytes = done_before
            job.state = "done"
            log.info("downloaded %s %s into %s", job.source, job.repo, folder / job.target)
        except _Cancelled:
            job.state = "cancelled"
            if staging is not None:
                _remove_tree(staging)
        except ModelError as exc:
            job.state, job.error = "failed", {"code": exc.code, "fields": exc.fields}
            log.warning("download %s of %s failed: %s", job.id, job.repo, exc)
        except Exception as exc:  # never let a worker die silently
            log.exception("download %s crashed", job.id)
            job.state, job.error = "failed", {"code": "download_failed", "fields": {"name": job.repo, "status": type(exc).__name__}}

    def _fetch(self, job: Download, remote: RemoteFile, final: Path, done_before: int) -> None:
        part = final.with_name(final.name + ".part")
        url = file_url(job.source, job.repo, remote.path)
        tries = 0
        while True:
            have = part.stat().st_size if part.exists() else 0
            if remote.size is not None and have > remote.size:
                part.unlink()
                have = 0
            try:
                self._stream(job, url, part, have, done_before, remote)
                break
            except _Dropped as exc:
                tries += 1
                log.info("download %s: connection dropped at %d bytes (%s); resuming (%d/%d)",
                         job.id, part.stat().st_size if part.exists() else 0, exc, tries, RETRIES)
                if tries > RETRIES:
                    raise ModelError("download_interrupted", name=remote.path) from None
                time.sleep(min(2.0, 0.2 * tries))
        # 3. Verify, then (and only then) give it its name.
        if remote.size is not None and part.stat().st_size != remote.size:
            part.unlink()
            raise ModelError("download_size_mismatch", name=remote.path)
        if remote.sha256 and len(remote.sha256) == 64:
            digest = hashlib.sha256()
            with open(part, "rb") as f:
                for block in iter(lambda: f.read(CHUNK), b""):
                    digest.update(block)
            if digest.hexdigest() != remote.sha256.lower():
                part.unlink()
                raise ModelError("download_checksum", name=remote.path)
        os.replace(part, final)

    def _stream(self, job: Download, url: str, part: Path, have: int, done_before: int, remote: RemoteFile) -> None:
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            response = _open(url, headers, timeout=CONNECT_TIMEOUT)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and remote.size is not None and have == remote.size:
                return  # already complete
            code = "download_not_found" if exc.code in (401, 403, 404) else "download_failed"
            raise ModelError(code, name=remote.path, status=exc.code) from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            if have:  # it was reachable a moment ago: a dropped connection, try again
                raise _Dropped(str(exc)) from None
            raise _offline(job.source, job.repo, url) from None
        with response:
            if have and response.status != 206:  # the server ignored Range: start over
                have = 0
            length = response.headers.get("Content-Length")
            expected = have + int(length) if length and length.isdigit() else remote.size
            mode = "ab" if have else "wb"
            with open(part, mode) as out:
                while True:
                    if job.cancel.is_set():
                        out.close()
                        part.unlink(missing_ok=True)
                        raise _Cancelled()
                    try:
                        block = response.read1(CHUNK)  # what has arrived: progress and stop stay live
                    except (OSError, ValueError, http.client.HTTPException) as exc:
                        raise _Dropped(str(exc)) from None
                    if not block:
                        break
                    out.write(block)
                    have += len(block)
                    job.done_bytes = done_before + have
        if expected is not None and have < expected:
            raise _Dropped(f"closed at {have} of {expected} bytes")


class _Cancelled(Exception):
    pass


class _Dropped(Exception):
    pass


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
