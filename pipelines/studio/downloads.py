"""模型下载: a repository's files, downloads started, cancelled and listed.

A part of the studio (pipelines/studio/__init__.py): it works on the attributes the Studio
sets up (store, outputs, jobs, ...); ui/ and api/ see it through pipelines/contracts.py."""

from __future__ import annotations

from ..downloads import SUGGESTIONS, endpoint


class Downloading:
    # -- 模型下载 ----------------------------------------------------------------------------
    def download_sources(self) -> dict:
        """Where each source downloads from now (HF_ENDPOINT, MODELSCOPE_ENDPOINT honoured)."""
        return {source: endpoint(source) for source in ("huggingface", "hf_mirror", "modelscope")}

    def download_suggestions(self) -> list[tuple[str, str, str, str]]:
        """常用模型: (name, source, repository, folder kind), Chinese models first."""
        return list(SUGGESTIONS)

    def download_plan(self, source: str, repo: str) -> list[dict]:
        """The repository's files with sizes, before anything is fetched."""
        return [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.downloads.files(source, repo)]

    def start_download(self, source: str, repo: str, kind: str, file: str | None = None,
                       sha256: str | None = None, user: str = "") -> dict:
        return self.downloads.start(source, repo, kind, file=file or None, sha256=sha256 or None, user=user).row()

    def cancel_download(self, job_id: str, user: str = "", admin: bool = True) -> dict:
        return self.downloads.cancel(job_id, user, admin).row()

    def download_rows(self) -> list[dict]:
        return [job.row() for job in self.downloads.jobs()]
