"""历史: every saved image indexed in SQLite (``outputs/history.sqlite3``) for search, filters and
paging, while the PNG files stay the source of truth.

1. Rows: one per PNG under ``outputs/<date>/`` or ``outputs/users/<folder>/<date>/`` (and the
   same under ``.trash/`` for deleted ones), with what its A1111 parameters say: prompt,
   negative prompt, seed, model, LoRAs, sampler, size, task; plus owner, date and a shared flag.
2. Search: every word of the query is a substring (Chinese included: 熊猫 finds 竹林里的大熊猫)
   of the prompt, negative prompt, model or LoRA names, or the seed; filters narrow it; pages
   are LIMIT/OFFSET queries, so memory does not grow with the history.
3. The index follows the disk: ``sync`` adds PNGs it lacks (a kill -9 between the file and its
   row), drops rows whose file is gone, and starts over from the files when the database is
   missing, corrupt or of another schema. Nothing is lost by deleting it.
4. Delete moves the file to the owner's ``.trash/<date>/`` (restorable); shared images are
   readable by every logged-in user (a team gallery).
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .errors import ParamError
from .formats import infotext
from .requests import HISTORY_TASKS
from .formats.pnginfo import parse_parameters, read_parameters_of

log = logging.getLogger(__name__)

SCHEMA = 1
DB_NAME = "history.sqlite3"
USERS_DIR = "users"
TRASH_DIR = ".trash"
SHARED_FILE = ".shared"
THUMBS_DIR = ".thumbs"
DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
PAGE_MAX = 200
TASKS = HISTORY_TASKS

COLUMNS = ("id", "path", "owner", "day", "created", "trashed", "shared", "task", "prompt", "negative", "seed",
           "model", "loras", "sampler", "steps", "cfg", "width", "height", "parameters")


@dataclass(frozen=True)
class Entry:
    """One indexed image. ``path`` is relative to the outputs folder; ``owner`` is the user's
    folder name ("" for images made without logins)."""

    id: int
    path: str
    owner: str
    day: str
    created: float
    trashed: bool
    shared: bool
    task: str
    prompt: str
    negative: str
    seed: int | None
    model: str
    loras: str
    sampler: str
    steps: int | None
    cfg: float | None
    width: int | None
    height: int | None
    parameters: str


@dataclass(frozen=True)
class Page:
    entries: list[Entry]
    total: int
    offset: int
    limit: int


def task_of(fields: dict) -> str:
    """Which task made an image, from its A1111 fields ("aux": a control map or a saved input)."""
    if not fields:
        return "aux"
    if "Postprocess upscaler" in fields:
        return "upscale"
    mode = infotext.mode_of(fields)
    if mode == "txt2img" and any(k.startswith("ControlNet") for k in fields):
        return "controlnet"
    return mode


def _number(value: str | None, kind=int):
    try:
        return kind(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def describe(parameters: str) -> dict:
    """The indexed columns of an image's parameters text."""
    parsed = parse_parameters(parameters or "")
    fields = parsed["fields"]
    width = height = None
    size = fields.get("Size", "")
    if "x" in size:
        width, height = (_number(v) for v in size.split("x", 1))
    loras = infotext.lora_names(parameters or "")
    seed = _number(fields.get("Seed"))
    return {
        "task": task_of(fields), "prompt": parsed["prompt"], "negative": parsed["negative_prompt"],
        "seed": seed if seed is not None and -2**63 <= seed < 2**63 else None,
        "model": fields.get("Model", ""), "loras": ", ".join(dict.fromkeys(loras)),
        "sampler": fields.get("Sampler", ""), "steps": _number(fields.get("Steps")),
        "cfg": _number(fields.get("CFG scale"), float), "width": width, "height": height,
    }


class History:
    """The index of one outputs folder. Thread-safe (one connection, one lock)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / DB_NAME
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self._synced = False

    # 1. The database ---------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            db = self._open()
        except sqlite3.DatabaseError as exc:
            # Corrupt or not a database: set it aside (never deleted) and start over from the PNGs.
            aside = self.path.with_name(f"{DB_NAME}.corrupt-{int(time.time())}")
            log.warning("history index %s unreadable (%s): moved to %s, rebuilding", self.path, exc, aside.name)
            for suffix in ("", "-wal", "-shm"):
                part = Path(f"{self.path}{suffix}")
                if part.exists():
                    os.replace(part, Path(f"{aside}{suffix}"))
            db = self._open()
        self._db = db
        return db

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        try:
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check failed")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA):
                db.execute("DROP TABLE IF EXISTS images")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(f"""
                CREATE TABLE IF NOT EXISTS images (
                    id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL, owner TEXT NOT NULL, day TEXT NOT NULL,
                    created REAL NOT NULL, mtime REAL NOT NULL, bytes INTEGER NOT NULL,
                    trashed INTEGER NOT NULL DEFAULT 0, shared INTEGER NOT NULL DEFAULT 0,
                    task TEXT NOT NULL, prompt TEXT NOT NULL, negative TEXT NOT NULL, seed INTEGER,
                    model TEXT NOT NULL, loras TEXT NOT NULL, sampler TEXT NOT NULL, steps INTEGER,
                    cfg REAL, width INTEGER, height INTEGER, parameters TEXT NOT NULL,
                    haystack TEXT NOT NULL);
                CREATE INDEX IF NOT EXISTS images_owner ON images (owner, trashed, created);
                CREATE INDEX IF NOT EXISTS images_shared ON images (shared, trashed, created);
                PRAGMA user_version={SCHEMA};
            """)
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
                self._synced = False

    # 2. Where files are --------------------------------------------------------------------
    def locate(self, path: Path) -> tuple[str, str, bool] | None:
        """(owner, day, trashed) of a PNG in the outputs layout, else None."""
        try:
            parts = Path(path).relative_to(self.root).parts
        except ValueError:
            return None
        owner = ""
        if len(parts) >= 2 and parts[0] == USERS_DIR:
            owner, parts = parts[1], parts[2:]
        trashed = bool(parts) and parts[0] == TRASH_DIR
        if trashed:
            parts = parts[1:]
        if len(parts) != 2 or not DAY.match(parts[0]) or not parts[1].lower().endswith(".png"):
            return None
        return owner, parts[0], trashed

    def _owner_roots(self) -> list[tuple[str, Path]]:
        roots = [("", self.root)]
        users = self.root / USERS_DIR
        if users.is_dir():
            roots += [(p.name, p) for p in sorted(users.iterdir()) if p.is_dir()]
        return roots

    def files_on_disk(self) -> dict[str, os.stat_result]:
        """Every indexable PNG: relative path → its stat."""
        found: dict[str, os.stat_result] = {}
        for _, base in self._owner_roots():
            for top in (base, base / TRASH_DIR):
                if not top.is_dir():
                    continue
                for day in os.scandir(top):
                    if not (day.is_dir(follow_symlinks=False) and DAY.match(day.name)):
                        continue
                    for item in os.scandir(day.path):
                        if item.name.lower().endswith(".png") and item.is_file(follow_symlinks=False):
                            found[Path(item.path).relative_to(self.root).as_posix()] = item.stat()
        return found

    # 3. Keeping up with the disk -----------------------------------------------------------
    def add(self, path: Path, parameters: str | None = None, shared: bool | None = None) -> None:
        """Index one saved PNG (``parameters``: its text when the caller has it, else read;
        ``shared``: None keeps what the owner's ``.shared`` list says)."""
        path = Path(path)
        where = self.locate(path)
        if where is None:
            return
        owner, day, trashed = where
        stat = path.stat()
        if parameters is None:
            parameters = self._read_parameters(path)
            if parameters is None:
                return
        row = describe(parameters)
        # The Chinese a translated prompt was typed in is searched too (formats/infotext: Original prompt).
        original = parse_parameters(parameters or "")["fields"]
        haystack = "\n".join((row["prompt"], row["negative"], row["model"], row["loras"],
                              original.get("Original prompt", ""), original.get("Original negative prompt", ""))).lower()
        rel = path.relative_to(self.root).as_posix()
        if shared is None:
            shared = not trashed and f"{day}/{path.name}" in self._shared_names(owner)
        with self._lock:
            db = self._connect()
            db.execute(
                "INSERT INTO images (path, owner, day, created, mtime, bytes, trashed, shared, task, prompt, negative,"
                " seed, model, loras, sampler, steps, cfg, width, height, parameters, haystack)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT(path) DO UPDATE SET mtime=excluded.mtime, bytes=excluded.bytes,"
                " trashed=excluded.trashed, task=excluded.task, prompt=excluded.prompt, negative=excluded.negative,"
                " seed=excluded.seed, model=excluded.model, loras=excluded.loras, sampler=excluded.sampler,"
                " steps=excluded.steps, cfg=excluded.cfg, width=excluded.width, height=excluded.height,"
                " parameters=excluded.parameters, haystack=excluded.haystack",
                (rel, owner, day, stat.st_mtime, stat.st_mtime, stat.st_size, int(trashed), int(shared), row["task"],
                 row["prompt"], row["negative"], row["seed"], row["model"], row["loras"], row["sampler"],
                 row["steps"], row["cfg"], row["width"], row["height"], parameters, haystack))
            db.commit()

    @staticmethod
    def _read_parameters(path: Path) -> str | None:
        try:
            with Image.open(path) as image:
                return read_parameters_of(image.info) or ""
        except Exception as exc:  # a truncated or foreign file is left out, never a crash
            log.warning("not indexing %s: %s", path.name, exc)
            return None

    def sync(self) -> dict[str, int]:
        """Make the index match the files: add what it lacks, drop what is gone, re-read what
        changed. Returns the counts."""
        started = time.perf_counter()
        on_disk = self.files_on_disk()
        with self._lock:
            db = self._connect()
            known = {p: (m, b) for p, m, b in db.execute("SELECT path, mtime, bytes FROM images")}
            gone = [p for p in known if p not in on_disk]
            db.executemany("DELETE FROM images WHERE path = ?", [(p,) for p in gone])
            db.commit()
        changed = [p for p, st in on_disk.items()
                   if p not in known or known[p] != (st.st_mtime, st.st_size)]
        for rel in changed:
            self.add(self.root / rel)
        self._synced = True
        counts = {"files": len(on_disk), "added": len(changed), "removed": len(gone)}
        if changed or gone:
            log.info("history index synced in %.2fs: %s", time.perf_counter() - started, counts)
        return counts

    def ensure_synced(self) -> None:
        with self._lock:
            if not self._synced:
                self.sync()

    # 4. Reading ------------------------------------------------------------------------------
    def search(self, owners: list[str] | None, text: str = "", *, shared_only: bool = False, trashed: bool = False,
               model: str = "", sampler: str = "", task: str = "", lora: str = "", day_from: str = "",
               day_to: str = "", offset: int = 0, limit: int = 48) -> Page:
        """A page of images, newest first. ``owners``: whose (None: everyone's, for an admin);
        ``shared_only``: the team gallery."""
        where, args = ["trashed = ?"], [int(trashed)]
        if not trashed:
            where.append("task != 'aux'")
        if owners is not None:
            if not owners:
                return Page([], 0, offset, limit)
            where.append(f"owner IN ({','.join('?' * len(owners))})")
            args += owners
        if shared_only:
            where.append("shared = 1")
        for word in str(text or "").lower().split()[:12]:
            if word.isdigit():
                where.append("(instr(haystack, ?) > 0 OR seed = ?)")
                args += [word, int(word) if len(word) < 19 else -1]
            else:
                where.append("instr(haystack, ?) > 0")
                args.append(word)
        for column, value in (("model", model), ("sampler", sampler), ("task", task)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        if lora:
            where.append("instr(loras, ?) > 0")
            args.append(lora)
        clauses, values = _days(day_from, day_to)
        where, args = where + clauses, args + values
        offset, limit = max(0, int(offset)), max(1, min(PAGE_MAX, int(limit)))
        clause = " AND ".join(where)
        self.ensure_synced()
        with self._lock:
            db = self._connect()
            total = db.execute(f"SELECT count(*) FROM images WHERE {clause}", args).fetchone()[0]
            rows = db.execute(f"SELECT {', '.join(COLUMNS)} FROM images WHERE {clause}"
                              " ORDER BY created DESC, id DESC LIMIT ? OFFSET ?", [*args, limit, offset]).fetchall()
        return Page([_entry(r) for r in rows], total, offset, limit)

    def get(self, entry_id: int) -> Entry | None:
        self.ensure_synced()
        with self._lock:
            row = self._connect().execute(f"SELECT {', '.join(COLUMNS)} FROM images WHERE id = ?",
                                          (int(entry_id),)).fetchone()
        return _entry(row) if row else None

    def by_path(self, path: Path) -> Entry | None:
        try:
            rel = Path(path).resolve().relative_to(self.root.resolve()).as_posix()
        except (ValueError, OSError):
            return None
        with self._lock:
            row = self._connect().execute(f"SELECT {', '.join(COLUMNS)} FROM images WHERE path = ?",
                                          (rel,)).fetchone()
        return _entry(row) if row else None

    def facets(self, owners: list[str] | None, shared_only: bool = False) -> dict[str, list[str]]:
        """The models, samplers and tasks present (the filter choices)."""
        where, args = ["trashed = 0", "task != 'aux'"], []
        if owners is not None:
            where.append(f"owner IN ({','.join('?' * len(owners)) or 'NULL'})")
            args += owners
        if shared_only:
            where.append("shared = 1")
        clause = " AND ".join(where)
        self.ensure_synced()
        with self._lock:
            db = self._connect()
            return {column: [v for (v,) in db.execute(
                        f"SELECT DISTINCT {column} FROM images WHERE {clause} AND {column} != '' ORDER BY {column}",
                        args)]
                    for column in ("model", "sampler", "task")}

    def usage(self, day_from: str = "", day_to: str = "") -> list[dict]:
        """Images per owner (generated ones, trash included) over the days given."""
        clauses, args = _days(day_from, day_to)
        where = ["task != 'aux'", *clauses]
        with self._lock:
            rows = self._connect().execute(
                f"SELECT owner, count(*), sum(bytes) FROM images WHERE {' AND '.join(where)} GROUP BY owner"
                " ORDER BY count(*) DESC", args).fetchall()
        return [{"owner": o, "images": n, "bytes": b or 0} for o, n, b in rows]

    # 5. Changing -----------------------------------------------------------------------------
    def move(self, entry: Entry, to_trash: bool) -> Path:
        """Move an image into its owner's trash or back; its row follows. Returns the new path."""
        source = self.root / entry.path
        base = self.root / USERS_DIR / entry.owner if entry.owner else self.root
        folder = (base / TRASH_DIR / entry.day) if to_trash else (base / entry.day)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / source.name
        n = 1
        while target.exists():  # a name taken meanwhile: never overwrite
            target = folder / f"{source.stem}-{n}{source.suffix}"
            n += 1
        os.replace(source, target)
        rel = target.relative_to(self.root).as_posix()
        with self._lock:
            db = self._connect()
            # A deleted image leaves the team gallery; a restored one comes back private.
            db.execute("UPDATE images SET path = ?, trashed = ?, shared = 0 WHERE id = ?", (rel, int(to_trash), entry.id))
            db.commit()
            if entry.shared:
                self._write_shared(entry.owner)
        return target

    def set_shared(self, entry: Entry, shared: bool) -> None:
        with self._lock:
            db = self._connect()
            db.execute("UPDATE images SET shared = ? WHERE id = ?", (int(shared), entry.id))
            db.commit()
            self._write_shared(entry.owner)

    # The shared flags are kept beside the pictures too (``<owner folder>/.shared``, one
    # ``<day>/<file>`` per line), so a rebuilt index still knows them.
    def _shared_file(self, owner: str) -> Path:
        return (self.root / USERS_DIR / owner if owner else self.root) / SHARED_FILE

    def _write_shared(self, owner: str) -> None:
        names = [p.split("/", 2)[-1] if owner else p for (p,) in self._connect().execute(
            "SELECT path FROM images WHERE owner = ? AND shared = 1 AND trashed = 0 ORDER BY path", (owner,))]
        target = self._shared_file(owner)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(SHARED_FILE + ".tmp")
        tmp.write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
        os.replace(tmp, target)

    def _shared_names(self, owner: str) -> set[str]:
        try:
            return set(self._shared_file(owner).read_text(encoding="utf-8").split("\n")) - {""}
        except OSError:
            return set()

    def forget(self, entry: Entry) -> None:
        with self._lock:
            db = self._connect()
            db.execute("DELETE FROM images WHERE id = ?", (entry.id,))
            db.commit()


def _days(day_from: str, day_to: str) -> tuple[list[str], list[str]]:
    """SQL clauses and arguments for ``day`` between two YYYY-MM-DD dates (either may be empty)."""
    clauses, args = [], []
    for op, value in ((">=", day_from), ("<=", day_to)):
        if value:
            if not DAY.match(str(value)):
                raise ParamError("history_bad_date", value=str(value)[:20])
            clauses.append(f"day {op} ?")
            args.append(value)
    return clauses, args


def _entry(row) -> Entry:
    values = dict(zip(COLUMNS, row))
    values["trashed"], values["shared"] = bool(values["trashed"]), bool(values["shared"])
    return Entry(**values)


def thumbnail(root: Path, entry: Entry, size: int = 320) -> Path:
    """A small WebP of an indexed image, made once: ``<owner folder>/.thumbs/<path there>.webp``
    (inside the owner's folder, so the file route guards it like the picture)."""
    base = Path(root) / USERS_DIR / entry.owner if entry.owner else Path(root)
    source = Path(root) / entry.path
    inner = source.relative_to(base)
    target = base / THUMBS_DIR / inner.parent / f"{inner.name}.webp"
    try:
        if target.stat().st_mtime >= source.stat().st_mtime:
            return target
    except OSError:
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        image.thumbnail((size, size))
        partial = target.with_name(f".{target.name}.part")
        image.convert("RGB").save(partial, format="WEBP", quality=82)
    os.replace(partial, target)
    return target


def picture_of(root: Path, path: Path) -> Path:
    """The picture a thumbnail stands for (any other path: itself)."""
    try:
        parts = Path(path).relative_to(root).parts
    except ValueError:
        return Path(path)
    if THUMBS_DIR in parts and parts[-1].endswith(".webp"):
        i = parts.index(THUMBS_DIR)
        return Path(root).joinpath(*parts[:i], *parts[i + 1:-1], parts[-1][: -len(".webp")])
    return Path(path)


class UsageLog:
    """Every GPU job's who, what, when, how long and how it ended, in ``outputs/usage.sqlite3``
    (its own file: rebuilding the history index never touches it). For the administrators'
    用量 view: per user, images made (from the history), GPU seconds, failures.

    It is also the jobs' journal (``opened``/``closed``, pipelines.jobs): a job is written down
    when accepted and struck out when it ends, so the jobs a kill -9 or a crash cut off are
    still there at the next start (``recover``); each user is told of theirs once
    (``unfinished``) instead of finding them silently gone."""

    KEEP_UNFINISHED_DAYS = 7

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / "usage.sqlite3"
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("CREATE TABLE IF NOT EXISTS jobs (at REAL NOT NULL, day TEXT NOT NULL, user TEXT NOT NULL,"
                           " kind TEXT NOT NULL, seconds REAL NOT NULL, outcome TEXT NOT NULL)")
                db.execute("CREATE INDEX IF NOT EXISTS jobs_day ON jobs (day)")
                db.execute("CREATE TABLE IF NOT EXISTS open_jobs (id TEXT PRIMARY KEY, at REAL NOT NULL,"
                           " key TEXT NOT NULL, user TEXT NOT NULL, kind TEXT NOT NULL,"
                           " state TEXT NOT NULL DEFAULT 'open')")
            except sqlite3.DatabaseError as exc:  # unreadable: set aside, start a new log
                log.warning("usage log %s unreadable (%s): starting a new one", self.path, exc)
                os.replace(self.path, self.path.with_name(f"usage.sqlite3.corrupt-{int(time.time())}"))
                return self._connect()
            self._db = db
        return self._db

    def record(self, user: str, kind: str, seconds: float, outcome: str) -> None:
        now = time.time()
        with self._lock:
            db = self._connect()
            db.execute("INSERT INTO jobs VALUES (?,?,?,?,?,?)",
                       (now, time.strftime("%Y-%m-%d", time.localtime(now)), user, kind, float(seconds), outcome))
            db.commit()

    # The journal -----------------------------------------------------------------------------
    def opened(self, ticket) -> None:
        """A job accepted (``ticket``: pipelines.jobs.Ticket)."""
        with self._lock:
            db = self._connect()
            db.execute("INSERT OR REPLACE INTO open_jobs VALUES (?,?,?,?,?, 'open')",
                       (ticket.id, ticket.since, ticket.key, ticket.user, ticket.kind))
            db.commit()

    def closed(self, ticket) -> None:
        with self._lock:
            db = self._connect()
            db.execute("DELETE FROM open_jobs WHERE id = ?", (ticket.id,))
            db.commit()

    def recover(self) -> int:
        """At start: the jobs a previous process left open did not finish. Returns how many;
        ones told of long ago are forgotten."""
        with self._lock:
            db = self._connect()
            db.execute("DELETE FROM open_jobs WHERE state = 'unfinished' AND at < ?",
                       (time.time() - self.KEEP_UNFINISHED_DAYS * 86400,))
            count = db.execute("UPDATE open_jobs SET state = 'unfinished' WHERE state = 'open'").rowcount
            db.commit()
        if count:
            log.warning("%d job(s) did not finish before the last stop; their users are told", count)
        return count

    def unfinished(self, key: str) -> list[dict]:
        """The jobs of ``key`` (pipelines.jobs.turn_key) that a stop cut off, oldest first, once:
        they are forgotten when read."""
        with self._lock:
            db = self._connect()
            rows = db.execute("SELECT id, at, kind FROM open_jobs WHERE state = 'unfinished' AND key = ?"
                              " ORDER BY at", (key,)).fetchall()
            if rows:
                db.executemany("DELETE FROM open_jobs WHERE id = ?", [(r[0],) for r in rows])
                db.commit()
        return [{"at": at, "kind": kind} for _, at, kind in rows]

    def summary(self, day_from: str = "", day_to: str = "") -> dict[str, dict]:
        """user → {jobs, gpu_seconds, failed, cancelled} over the days given."""
        clauses, args = _days(day_from, day_to)
        where = ["1=1", *clauses]
        with self._lock:
            rows = self._connect().execute(
                "SELECT user, count(*), sum(seconds), sum(outcome = 'failed'), sum(outcome = 'cancelled')"
                f" FROM jobs WHERE {' AND '.join(where)} GROUP BY user", args).fetchall()
        return {u: {"jobs": n, "gpu_seconds": round(s or 0.0, 1), "failed": f or 0, "cancelled": c or 0}
                for u, n, s, f, c in rows}

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
