"""The GPU line as people see and steer it: 停止, the queue view, cancelling, the jobs a crash
cut off, 用量, holding the GPU for several jobs (an A1111 batch, a grid's model) and giving way.

A part of the studio (pipelines/studio/__init__.py): it works on the attributes the Studio
sets up (store, outputs, jobs, ...); ui/ and api/ see it through pipelines/contracts.py."""

from __future__ import annotations

import hashlib
import logging
import time
from contextlib import contextmanager

from ..errors import ParamError
from ..jobs import as_caller, turn_key
from ..requests import Caller

log = logging.getLogger(__name__)


def _job_id(client: str) -> str:
    """A queued job's public id: a hash of its stop-switch key (a page's session), never the key."""
    return hashlib.sha256(client.encode()).hexdigest()[:12]


class Line:
    # -- jobs ---------------------------------------------------------------------------------
    def stop(self, client: str) -> bool:
        return self.jobs.stop(client)

    def queue_view(self, user: str = "", address: str = "") -> list[dict]:
        """The GPU line as ``user`` (without logins: the client at ``address``) may see it: the
        running job and the waiting ones in the order they will go, with place and estimated
        wait. Their own jobs (everyone's for an administrator) with who and what and an id to
        cancel; others' only as "someone"."""
        admin = self.team.sees_everyone(user)
        me = turn_key(Caller(user=user, address=address or "local"))
        rows = []
        for row in self.jobs.queue():
            mine = row["key"] == me
            visible = admin or mine
            rows.append({"id": _job_id(row["client"]) if visible else None, "mine": mine,
                         "user": row["user"] if visible else "", "kind": row["kind"] if visible else "",
                         "state": row["state"], "place": row["place"], "waited": row["waited"], "eta": row["eta"],
                         "step": row.get("step") if visible else None, "total": row.get("total") if visible else None})
        return rows

    def unfinished_jobs(self, user: str = "", address: str = "") -> list[dict]:
        """The jobs of ``user`` (without logins: of ``address``) that a restart or crash cut
        off before they finished ({at, kind}), told once."""
        return self.usage_log.unfinished(turn_key(Caller(user=user, address=address or "local")))

    def cancel_job(self, job_id: str, user: str = "", address: str = "") -> dict:
        """Cancel a waiting (or running) job by its id from ``queue_view``: one's own, or any for
        an administrator. Anything else is ``job_not_found`` (the same as no such job)."""
        me = turn_key(Caller(user=user, address=address or "local"))
        for row in self.jobs.queue():
            if _job_id(row["client"]) != str(job_id):
                continue
            if not (self.team.sees_everyone(user) or row["key"] == me):
                break
            batch = self.jobs.batch(row["client"])
            if batch is not None:
                self.jobs.interrupt_batch(batch)
            else:
                self.jobs.stop(row["client"])
            # A waiting job leaves the line within a poll: answer once it has (the list shown
            # next is then right).
            deadline = time.monotonic() + 1.0
            while row["state"] == "waiting" and time.monotonic() < deadline and any(
                    t.client == row["client"] for t in self.jobs.turns.line()):
                time.sleep(0.05)
            return {"id": job_id, "state": row["state"], "cancelled": True}
        raise ParamError("job_not_found")

    def usage(self, user: str = "", day_from: str = "", day_to: str = "") -> list[dict]:
        """用量 per user over the days given: images made (the history), GPU jobs, GPU seconds,
        failed and cancelled jobs. Administrators only (when there are logins)."""
        if user and not self.team.sees_everyone(user):
            raise ParamError("admin_only_usage")
        jobs = self.usage_log.summary(day_from, day_to)
        images = {row["owner"]: row["images"] for row in self.outputs.history.usage(day_from, day_to)}
        names = {self.outputs_owner(u): u for u in jobs}  # folder name → user name
        rows = {}
        for owner, count in images.items():
            rows[names.get(owner, owner)] = {"images": count}
        for name, row in jobs.items():
            rows.setdefault(name, {"images": images.get(self.outputs_owner(name), 0)}).update(row)
        return [{"user": name, "images": r.get("images", 0), "jobs": r.get("jobs", 0),
                 "gpu_seconds": r.get("gpu_seconds", 0.0), "failed": r.get("failed", 0),
                 "cancelled": r.get("cancelled", 0)}
                for name, r in sorted(rows.items(), key=lambda kv: -kv[1].get("gpu_seconds", 0.0))]

    # -- batches: several jobs of one request (the A1111 API's n_iter, an extras upscale) ------------
    def open_batch(self, user: str, kind: str, count: int = 1, address: str = "local"):
        """A request that runs ``count`` jobs in a row (pipelines.jobs.Batch): its own client id,
        who asked, where it stands, for /progress and /interrupt."""
        return self.jobs.open_batch(user, kind, count, address=address)

    def close_batch(self, batch) -> None:
        self.jobs.close_batch(batch)

    def interrupt_batch(self, batch) -> None:
        """Stop a batch: its running job within a step, its waiting ones at once."""
        self.jobs.interrupt_batch(batch)

    def running_job(self) -> tuple[dict | None, object]:
        """(the running job's {client, user, step, total, seconds_per_step} or None when idle,
        its batch or None): what /sdapi/v1/progress reports."""
        snap = self.jobs.snapshot()
        return snap, (self.jobs.batch(snap["client"]) if snap is not None else None)

    def hold_gpu(self, batch=None):
        """The GPU for several jobs in a row (the A1111 API's model override and batches): the
        batch (pipelines.jobs.Batch) waits for its turn like any job."""
        return self.jobs.hold(batch)

    def interrupt(self, user: str) -> int:
        """A1111's /interrupt for ``user``: their batches, running and waiting jobs and training
        runs (each within a step). Returns how many were stopped."""
        return self.jobs.interrupt(user) + sum(self.jobs.stop(t.client) for t in self.training_turns.line()
                                               if user and t.user == user)

    def give_way(self, batch) -> bool:
        """Between the jobs of a held batch (the A1111 API's n_iter): when someone else waits,
        let them go first, then continue. Returns whether it gave way."""
        return self.jobs.give_way(batch.caller, batch.kind)

    def others_waiting(self) -> bool:
        return self.jobs.turns.others_waiting()

    @contextmanager
    def on_model(self, ref: str, client: Caller | str = "local", kind: str = "txt2img"):
        """Several jobs of ``client`` on base model ``ref`` (an X/Y grid's model axis): the GPU
        is held for them (nobody else's job runs on the borrowed model), the model switched if
        needed and switched back afterwards. 停止 reaches it while it waits and between jobs."""
        caller = as_caller(client)
        self.store.choice(ref)  # an unknown model is refused before waiting
        with self.jobs.hold(caller=caller, kind=kind):
            previous = self.current_model()
            if ref != previous:
                self.switch_model(ref)
            try:
                yield
            finally:
                if ref != previous:
                    self.switch_model(previous)
