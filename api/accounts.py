"""The accounts of ``--auth``: who is logged in on a request, and who may change shared settings.

A request is logged in by Gradio's session cookie (the login page) or by HTTP Basic
credentials (the A1111 routes, ``--api-auth`` style). Both are checked here, at the edge,
before any body is read. Gradio keeps its sessions in ``App.tokens`` (token -> user) under
the cookie ``access-token[-unsecure]-<cookie_id>``; they are only read.

Shared settings (prompt styles, the base model) belong to the administrators: the users of
``--admins``, by default the first user of ``--auth``. With a single account (or none), that
one user is the administrator, as in A1111.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass

from starlette.requests import HTTPConnection


@dataclass(frozen=True)
class Accounts:
    pairs: tuple[tuple[str, str], ...] = ()
    admins: frozenset[str] = frozenset()

    @classmethod
    def of(cls, pairs, admins: str | None = None) -> "Accounts":
        pairs = tuple(pairs or ())
        names = {n.strip() for n in (admins or "").split(",") if n.strip()}
        if not names and pairs:
            names = {pairs[0][0]}
        unknown = names - {user for user, _ in pairs}
        if pairs and unknown:
            raise ValueError(f"--admins names users that --auth does not: {', '.join(sorted(unknown))}")
        return cls(pairs=pairs, admins=frozenset(names))

    @property
    def required(self) -> bool:
        return bool(self.pairs)

    def check(self, user: str, password: str) -> str | None:
        """The account these credentials open, or None (every account compared: no early exit)."""
        matched = None
        for name, secret in self.pairs:
            if secrets.compare_digest(user.encode(), name.encode()) & secrets.compare_digest(password.encode(), secret.encode()):
                matched = name
        return matched

    def basic(self, header: str) -> str | None:
        """The user of an ``Authorization: Basic ...`` header (UTF-8 names), or None."""
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, ValueError):
            return None
        return self.check(user, password) if sep else None

    @staticmethod
    def session_user(scope) -> str | None:
        """The user of Gradio's login cookie on this request, or None."""
        app = scope.get("app")
        tokens, cookie_id = getattr(app, "tokens", None), getattr(app, "cookie_id", None)
        if not tokens or cookie_id is None:
            return None
        cookies = HTTPConnection(scope).cookies
        token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
        return tokens.get(token) if token else None

    def is_admin(self, user: str | None) -> bool:
        """Without accounts everyone is; with them, the --admins users."""
        return not self.pairs or (user or "") in self.admins

    def shared_by_several(self) -> bool:
        return len(self.pairs) > 1


USER_KEY = "danqing_user"


def user_of(scope) -> str:
    """The user the edge middleware found on this request ("" without --auth)."""
    return (scope.get("state") or {}).get(USER_KEY, "")
