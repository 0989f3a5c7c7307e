"""The front process's side of ``--ray``: Ray started (or joined), the engine deployed as Ray
Serve replicas, and each generation job run on one of them.

The front keeps everything that is one per team: logins, the fair queue (pipelines/jobs.py
Turns, with one turn per replica), per-user limits, the history index and the saved files.
A replica receives a typed request (pipelines/requests.py) and streams back steps, previews
and the result (replica.py). A replica that dies mid-job: the job is sent once more (Serve
routes it to a live replica while Ray restarts the dead one); a second loss is
``replica_lost``, said in Chinese.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import DanqingError, JobCancelled

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
APP_NAME = "danqing"
DEPLOYMENT = "danqing-engine"


@dataclass(frozen=True)
class RayOptions:
    """``--ray [ADDRESS]``, ``--replicas N`` or ``--min-replicas``/``--max-replicas``
    (autoscaling on ongoing requests), ``--replica-threads`` (CPU replicas)."""

    address: str = ""  # "" starts a local Ray cluster
    replicas: int = 1
    min_replicas: int = 0  # both set: autoscaling between them
    max_replicas: int = 0
    threads: int = 0  # CPU threads per replica (0: Ray's default for one CPU)
    gpus: bool = False  # one GPU per replica

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas > 0

    @property
    def capacity(self) -> int:
        """Jobs the front lets run at once: one per replica (the most there may be)."""
        return self.max_replicas if self.autoscaling else self.replicas


class RayEngine:
    """Runs generation tasks on the replicas. ``run`` blocks the calling job thread like the
    local tasks do, and reports steps and previews through the same hooks."""

    RETRIES = 1

    def __init__(self, handle, options: RayOptions) -> None:
        self.handle = handle
        self.options = options

    def run(self, task: str, request, *, model: str, vae: str, cancel: threading.Event, on_step=None,
            on_preview=None, edits: dict[str, str] | None = None):
        """(Generated, facts) of ``task`` on a replica, which prepares the request itself
        (tasks/prepare.py) with ``edits``, the user's edited translations. ``facts``: the
        replica's model hash, VAE and process id. Raises JobCancelled, the replica's
        DanqingError, or ``replica_lost`` after the retry."""
        from ray.exceptions import RayError
        from ray.serve.exceptions import RayServeException

        lost = (RayError, RayServeException)  # the replica died, or none could take the job

        job = {"task": task, "request": request, "model": model, "vae": vae, "previews": on_preview is not None,
               "edits": dict(edits or {})}
        for attempt in range(self.RETRIES + 1):
            stream = self.handle.options(stream=True).run.remote(job)
            try:
                for event in stream:
                    if cancel.is_set():
                        stream.cancel()
                        raise JobCancelled()
                    kind = event[0]
                    if kind == "step" and on_step is not None:
                        on_step(event[1], event[2])
                    elif kind == "preview" and on_preview is not None:
                        on_preview(event[1], event[2], event[3])
                    elif kind == "done":
                        result, facts = event[1], dict(event[2])
                        facts["attempts"] = attempt + 1
                        return result, facts
                    elif kind == "cancelled":
                        raise JobCancelled()
                    elif kind == "error":
                        raise DanqingError(event[1], **event[2])
                raise RayError("the replica's stream ended without a result")
            except lost as exc:
                if cancel.is_set():
                    raise JobCancelled() from None
                log.warning("replica lost during %s (attempt %d): %s", task, attempt + 1, exc)
        raise DanqingError("replica_lost")

    def replicas(self) -> list[dict]:
        """The running replicas (for 系统信息): their state as Serve reports it."""
        from ray import serve

        try:
            status = serve.status().applications[APP_NAME].deployments[DEPLOYMENT]
            return [{"state": str(getattr(k, "value", k)), "count": int(v)} for k, v in status.replica_states.items()]
        except Exception:  # noqa: BLE001 (status is informative only)
            return []


def connect(address: str = "", num_cpus: int | None = None) -> None:
    """Start a local Ray cluster (or join ``address``) once per process. The replicas import
    Danqing from this checkout (PYTHONPATH: the same path on every node).

    A local cluster is this machine's alone: its node address is loopback (what Ray's agents
    and workers advertise and, where Ray lets them, bind), no dashboard, Ray's token
    authentication left on (Ray 2.60 turns it on; a Ray that binds its core services to every
    address still refuses callers without the token). Ray 2.60 offers no setting to bind GCS
    and raylet to loopback only: the README says which ports to firewall."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        log.warning("RAY_AUTH_MODE=disabled: Ray's ports accept callers without a token (see the README)")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
           "DANQING_CACHE": os.environ.get("DANQING_CACHE", "")}
    local = {} if address else {"num_cpus": num_cpus, "_node_ip_address": "127.0.0.1"}
    ray.init(address=address or None, include_dashboard=False,
             runtime_env={"env_vars": {k: v for k, v in env.items() if v}}, log_to_driver=False, **local)


def start(settings, options: RayOptions) -> RayEngine:
    """Start a local Ray cluster (or join ``options.address``), deploy the engine replicas and
    return the engine once they are up. Every replica imports Danqing from this checkout's path
    (the same path on every node; see the README)."""
    from ray import serve

    from .replica import EngineReplica

    connect(options.address)
    actor = {"num_gpus": 1} if options.gpus else {"num_cpus": 1}
    scaling = ({"autoscaling_config": {"min_replicas": options.min_replicas, "max_replicas": options.max_replicas,
                                       "target_ongoing_requests": 1}}
               if options.autoscaling else {"num_replicas": options.replicas})
    deployment = serve.deployment(EngineReplica, name=DEPLOYMENT, ray_actor_options=actor, max_ongoing_requests=1,
                                  health_check_period_s=2, health_check_timeout_s=30, **scaling)
    handle = serve.run(deployment.bind(settings, options.threads or None), name=APP_NAME, route_prefix=None)
    log.info("Ray Serve: %s", "autoscaling %d–%d replicas" % (options.min_replicas, options.max_replicas)
             if options.autoscaling else f"{options.replicas} replica(s)")
    return RayEngine(handle, options)


def stop() -> None:
    try:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()
    except Exception:  # noqa: BLE001 (shutting down: nothing to tell)
        pass
