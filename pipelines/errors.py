"""Errors the engine raises for users to read.

The engine carries no user-facing text: each error has a stable ASCII ``code`` and named
fields, and the UI's strings module turns them into Chinese (or English) sentences. A test
checks that every code raised here has a translation.
"""

from __future__ import annotations


class DanqingError(Exception):
    """An error meant for the user: bad input, a missing model, a cancelled job."""

    def __init__(self, code: str, **fields: object) -> None:
        super().__init__(f"{code}: {fields}" if fields else code)
        self.code = code
        self.fields = fields


class ParamError(DanqingError):
    """A request parameter is missing, malformed or out of range."""


class ModelError(DanqingError):
    """A model cannot be found, downloaded or loaded."""


class JobCancelled(DanqingError):
    """The user pressed stop; raised from the step callback so the job ends within one step."""

    def __init__(self) -> None:
        super().__init__("cancelled")
