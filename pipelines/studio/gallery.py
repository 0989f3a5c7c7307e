"""Saved pictures and 历史: saving, reading parameters, whose file is whose (files served and
named as inputs), the history index's views, trash and sharing.

A part of the studio (pipelines/studio/__init__.py): it works on the attributes the Studio
sets up (store, outputs, jobs, ...); ui/ and api/ see it through pipelines/contracts.py."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from .. import history as index
from ..errors import ParamError
from ..formats.pnginfo import read_parameters
from ..outputs import user_folder

OWN_LOOKUP = 2000  # how many of a user's newest images a gallery copy is looked up among


class Gallery:
    # -- outputs and PNG info ---------------------------------------------------------------
    def save(self, image: Image.Image, parameters: str, seed: int, suffix: str = "", user: str = "") -> Path:
        """Save an image made from generated ones (an extension's grid) with its parameters."""
        return self.outputs.save(image, parameters, seed, suffix=suffix, user=user)

    @staticmethod
    def png_parameters(image: Image.Image) -> str | None:
        return read_parameters(image)

    def recent_outputs(self, limit: int = 60, user: str = "") -> list[Path]:
        """The user's newest saved images ("" without --auth: everything in outputs/<date>/)."""
        return self.outputs.recent(limit, user)

    def own_output(self, path, user: str = "") -> Path | None:
        """The saved PNG in outputs/ that ``path`` names, when ``user`` may read it; else None (a
        path a browser sends back is never trusted as it is). A gallery shows Gradio's copy of
        a result (its cache keeps the file name), so a path outside outputs/ is looked up by its
        name among the user's own newest images, never opened itself."""
        try:
            resolved = Path(path).resolve()
        except (OSError, TypeError, ValueError):
            return None
        try:
            resolved.relative_to(self.outputs.root.resolve())
        except ValueError:
            resolved = next((p.resolve() for p in self.recent_outputs(OWN_LOOKUP, user) if p.name == resolved.name), None)
            if resolved is None:
                return None
        if resolved.suffix.lower() != ".png" or not resolved.is_file() or not self.may_read(resolved, user):
            return None
        return resolved

    @staticmethod
    def saved_parameters(path) -> str | None:
        """The parameters text of a saved image (its text chunks only; pixels are not decoded)."""
        try:
            with Image.open(path) as image:
                return read_parameters(image)
        except OSError:
            return None

    def may_read(self, path: str, user: str = "") -> bool:
        """Whether ``user`` may read a file: their own folder's, an administrator everything, any
        logged-in user a picture (or its thumbnail) shared with the team. Pictures made before
        logins were turned on (in outputs/ outside the users' folders) are nobody's own: with
        logins only administrators read them; without logins everyone does. Files outside
        outputs/ are left to the file route's own rules."""
        root = self.outputs.root.resolve()
        try:
            resolved = Path(path).resolve()
            inner = resolved.relative_to(root).parts
        except (OSError, TypeError, ValueError):
            return True  # not in outputs/: the file route's own rules decide
        # In outputs/ only pictures and thumbnails are files to serve: never the index, the
        # sharing lists, a half-written file or a training checkpoint.
        if resolved.suffix.lower() not in (".png", ".webp") or any(
                p.startswith(".") and p not in (index.THUMBS_DIR, index.TRASH_DIR) for p in inner):
            return False
        if not user:  # no logins: everything outside the users' folders
            return inner[:1] != (index.USERS_DIR,)
        if self.team.sees_everyone(user):
            return True
        if inner[:1] != (index.USERS_DIR,):
            # Made before logins were turned on: nobody's own, an administrator's 全部 only.
            return False
        if self.outputs.may_read(path, user):
            return True
        try:
            picture = index.picture_of(self.outputs.root.resolve(), Path(path).resolve())
        except (OSError, ValueError):
            return False
        entry = self.outputs.history.by_path(picture)
        return entry is not None and not entry.trashed and (entry.shared or self.team.gallery)

    def _check_inputs(self, sources, user: str = "") -> None:
        """Files named as a job's inputs: inside outputs/ only what ``user`` may read (the rule
        of the file route; the edge checks first, this is the engine's own guard)."""
        for source in sources:
            if isinstance(source, (str, Path)) and not self.may_read(str(source), user):
                raise ParamError("file_not_found")

    # -- 历史 (history) -------------------------------------------------------------------------
    def _scope(self, user: str, scope: str) -> tuple[list[str] | None, bool, bool]:
        """(owners, shared only, trashed) of a history view; an unknown or forbidden scope is
        refused."""
        own = [self.outputs_owner(user)]
        if scope == "mine":
            return own, False, False
        if scope == "trash":
            return own, False, True
        if scope == "team" and user:
            return None, not self.team.gallery, False
        if scope == "all" and self.team.sees_everyone(user):
            return None, False, False
        raise ParamError("history_bad_scope", value=str(scope)[:20])

    def history(self, user: str = "", scope: str = "mine", text: str = "", **filters) -> index.Page:
        """A page of the user's saved images (or the team's shared ones, or everyone's for an
        administrator, or the user's trash), newest first, searched and filtered."""
        owners, shared_only, trashed = self._scope(user, scope)
        return self.outputs.history.search(owners, text, shared_only=shared_only, trashed=trashed, **filters)

    def history_facets(self, user: str = "", scope: str = "mine") -> dict[str, list[str]]:
        owners, shared_only, _ = self._scope(user, scope if scope != "trash" else "mine")
        return self.outputs.history.facets(owners, shared_only)

    def history_entry(self, entry_id, user: str = "", own: bool = False) -> index.Entry:
        """An indexed image the user may see (``own``: may change); else ``history_not_found``."""
        try:
            entry = self.outputs.history.get(int(entry_id))
        except (TypeError, ValueError):
            entry = None
        if entry is not None and not (self.outputs.root / entry.path).is_file():
            self.outputs.history.forget(entry)  # deleted by hand: the index catches up
            entry = None
        mine = entry is not None and entry.owner == self.outputs_owner(user)
        if entry is None or (own and not mine) or not (mine or self.may_read(str(self.outputs.root / entry.path), user)):
            raise ParamError("history_not_found")
        return entry

    @staticmethod
    def outputs_owner(user: str) -> str:
        """The owner name the history gives a user's images (their folder's name)."""
        return user_folder(user) if user else ""

    def history_file(self, entry: index.Entry) -> Path:
        return self.outputs.root / entry.path

    def history_thumbnail(self, entry: index.Entry) -> Path:
        try:
            return index.thumbnail(self.outputs.root, entry)
        except OSError:
            return self.history_file(entry)

    def history_delete(self, entry_id, user: str = "") -> Path:
        """To the user's trash (own images only); 恢复 brings it back."""
        entry = self.history_entry(entry_id, user, own=True)
        if entry.trashed:
            raise ParamError("history_already_deleted")
        return self.outputs.history.move(entry, to_trash=True)

    def history_restore(self, entry_id, user: str = "") -> Path:
        entry = self.history_entry(entry_id, user, own=True)
        if not entry.trashed:
            raise ParamError("history_not_deleted")
        return self.outputs.history.move(entry, to_trash=False)

    def history_share(self, entry_id, user: str = "", shared: bool = True) -> None:
        """Show one of the user's images in the team gallery (or take it back)."""
        entry = self.history_entry(entry_id, user, own=True)
        if entry.trashed:
            raise ParamError("history_already_deleted")
        self.outputs.history.set_shared(entry, bool(shared))
