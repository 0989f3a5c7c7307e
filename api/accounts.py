"""The accounts of ``--auth``: who is logged in on a request, and who may change shared settings.

A request is logged in by Gradio's session cookie (the login page) or by HTTP Basic
credentials (the A1111 routes, ``--api-auth`` style). Both are checked here, at the edge,
before any body is read. Gradio keeps its sessions in ``App.tokens`` (token -> user) under
the cookie ``access-token[-unsecure]-<cookie_id>``; they are only read.

Accounts come from ``--auth USER:PASS,...`` and/or a users file (``--users FILE``: salted
scrypt hashes, written by ``python -m api.accounts add NAME FILE``).

Shared settings (prompt styles, the base model) belong to the administrators: the users of
``--admins``, by default the first user of ``--auth`` (or of the users file). With a single account (or none), that
one user is the administrator, as in A1111.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

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
        """The account these credentials open, or None (every account compared: no early exit).
        A secret from a users file is a salted scrypt hash: one hash is computed per check,
        whether or not the name exists (the same time either way)."""
        matched, hashed = None, None
        for name, secret in self.pairs:
            same_name = secrets.compare_digest(user.encode(), name.encode())
            if secret.startswith(HASH_PREFIX):
                if same_name:
                    hashed = (name, secret)
            elif same_name & secrets.compare_digest(password.encode(), secret.encode()):
                matched = name
        if any(s.startswith(HASH_PREFIX) for _, s in self.pairs):
            name, secret = hashed or ("", _DUMMY_HASH)
            if verify_password(password, secret) and hashed is not None:
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

    def shared_by_several(self) -> bool:
        return len(self.pairs) > 1


# 2. A users file: one ``name:scrypt$n$r$p$salt$hash`` per line (``#`` comments), written by
#    ``python -m api.accounts add NAME FILE``; no password is ever stored.
HASH_PREFIX = "scrypt$"
SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, dklen=32, **SCRYPT)
    return (f"{HASH_PREFIX}{SCRYPT['n']}${SCRYPT['r']}${SCRYPT['p']}$"
            f"{base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}")


def verify_password(password: str, stored: str) -> bool:
    try:
        n, r, p, salt, digest = stored[len(HASH_PREFIX):].split("$")
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(expected), maxmem=2**26)
    except (ValueError, binascii.Error):
        return False
    return secrets.compare_digest(got, expected)


_DUMMY_HASH = hash_password("", b"danqing-no-user!")


def read_users(path: Path) -> list[tuple[str, str]]:
    """(name, hash) pairs of a users file; ValueError for a line that is not one."""
    pairs = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, secret = line.partition(":")
        if not sep or not name.strip() or not secret.startswith(HASH_PREFIX) or secret.count("$") != 5:
            raise ValueError(f"line {number}")
        pairs.append((name.strip(), secret))
    return pairs


def add_user(path: Path, name: str, password: str) -> None:
    """Add (or replace) ``name`` in a users file with a new salted hash of ``password``."""
    if not name or ":" in name or name != name.strip() or not password:
        raise ValueError("name")
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    kept = [line for line in lines if line.partition(":")[0].strip() != name]
    kept.append(f"{name}:{hash_password(password)}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(kept) + "\n", encoding="utf-8")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def main(argv=None) -> int:
    """``python -m api.accounts add NAME FILE`` (the password asked twice, or one line from
    standard input with --password-stdin)."""
    import argparse
    import getpass
    import sys

    p = argparse.ArgumentParser(prog="python -m api.accounts", description="Add a user to a Danqing users file "
                                "(app.py --users FILE); passwords are stored as salted scrypt hashes.")
    p.add_argument("command", choices=["add"])
    p.add_argument("name")
    p.add_argument("file")
    p.add_argument("--password-stdin", action="store_true")
    p.add_argument("--lang", default=None)
    args = p.parse_args(argv)
    from strings import load

    S = load(args.lang)
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(S.users_password.format(name=args.name))
        if password != getpass.getpass(S.users_again):
            print(S.users_differ, file=sys.stderr)
            return 2
    try:
        add_user(Path(args.file), args.name, password)
    except ValueError:
        print(S.users_bad_name, file=sys.stderr)
        return 2
    print(S.users_added.format(name=args.name, file=args.file))
    return 0


USER_KEY = "danqing_user"


def user_of(scope) -> str:
    """The user the edge middleware found on this request ("" without --auth)."""
    return (scope.get("state") or {}).get(USER_KEY, "")


if __name__ == "__main__":
    raise SystemExit(main())
