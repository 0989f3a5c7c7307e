"""Who administers a team server, said once: app.py builds one ``Team`` from the accounts and
passes the same object to the studio, the UI, the APIs and the extensions' loader, so every
"may this user…" is answered by one of these methods, not by a copy of the administrator set.

- ``is_admin(user)``: an administrator — without logins everyone is (a desktop, a Space).
- ``sees_everyone(user)``: sees every user's pictures, queue and 用量 — administrators with
  logins only (without logins there is no "everyone else").
- ``may_change_shared(user)``: may change what all users share (the base model, the VAE,
  风格预设, downloads) — everyone unless several people log in, then administrators.
Pure Python: the UI imports it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Team:
    admins: frozenset[str] = frozenset()
    logins: bool = False  # people log in (--auth / --users)
    several: bool = False  # more than one account: shared settings are the administrators'
    gallery: bool = False  # --team-gallery: every saved picture is shared with the team

    def is_admin(self, user: str | None) -> bool:
        return not self.logins or (user or "") in self.admins

    def sees_everyone(self, user: str | None) -> bool:
        return bool(user) and user in self.admins

    def may_change_shared(self, user: str | None) -> bool:
        return not self.several or (user or "") in self.admins

    def admin_names(self, separator: str) -> str:
        """The administrators, for a sentence that says who may."""
        return separator.join(sorted(self.admins))
