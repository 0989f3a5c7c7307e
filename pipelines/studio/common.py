"""What the studio's parts share: its version, and the lock of replicas (none here)."""

from __future__ import annotations

VERSION = "0.1.0"


class _NoLock:
    """The jobs' lock when the GPUs are Ray Serve replicas: each replica has its own."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def acquire(self, *args, **kwargs):
        return True

    def release(self):
        pass


NO_LOCK = _NoLock()
