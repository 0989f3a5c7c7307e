"""The generation tasks by their stable names: what the studio runs, what a Ray Serve replica is
asked to run, the kind a job is recorded as (queue, 用量). A name is said once, here, with the
decorator on the task itself; renaming a function changes nothing a user or a replica sees.

The names a job can be recorded as, and the tasks 历史 knows, are in requests.py (pure Python:
the UI and the strings' tests read them)."""

from __future__ import annotations

from typing import Callable

from ..requests import JOB_KINDS

TASKS: dict[str, Callable] = {}


def task(name: str):
    """Register a generation task under ``name`` (one of requests.JOB_KINDS, or a variant of
    one: "control_hires" runs as a ControlNet job)."""

    def register(fn: Callable) -> Callable:
        if name in TASKS:
            raise ValueError(f"task {name!r} registered twice")
        TASKS[name] = fn
        return fn

    return register


def get(name: str) -> Callable:
    """The task registered as ``name`` (the package imports every task module: tasks/__init__.py)."""
    return TASKS[name]


def kind_of(name: str) -> str:
    """The job kind a task is recorded as."""
    kind = "controlnet" if name == "control_hires" else name
    assert kind in JOB_KINDS, kind
    return kind
