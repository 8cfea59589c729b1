"""SQLite persistence of one home's locks: the fencing counter, grants, lock-delays.

Owns ``locks.db`` (WAL, ``synchronous=FULL``; both are checked at open and a
database that does not run that way is refused).  Blocking: the service calls
it under its own lock, from worker threads.

What is stored, and why only that:

* ``fence`` -- the last token issued.  It is written in the same transaction
  as the grant that took the token, and only ever raised (``MAX``), so after
  any crash it is >= every token ever acknowledged: the counter never goes back.
* ``grants`` -- token, target, mode, holder, TTL and request id of every live
  grant.  Lease times are *not* stored: they are on the monotonic clock of a
  process that may be gone.  On reopen every grant gets a full fresh TTL.
* ``delays`` -- lock-delays still running when the last change was written;
  on reopen each gets a full fresh delay.
* Waiters are not stored: they are open client connections, which a restart
  closes; their clients retry (with the same request id).

A failed commit (disk full, EIO on fsync) raises :class:`StateError`; the
service then refuses all further work, because its memory is ahead of the disk
(an fsync error is fatal, "fsyncgate").
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from meshd.errors import StateError
from meshd.files import private_dir
from meshd.locks.modes import Mode
from meshd.locks.table import SavedDelay, SavedGrant

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS grants (
    token      INTEGER PRIMARY KEY,
    target     TEXT NOT NULL,
    mode       TEXT NOT NULL,
    holder     TEXT NOT NULL,
    ttl_s      REAL NOT NULL,
    request_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS delays (
    token  INTEGER PRIMARY KEY,
    target TEXT NOT NULL,
    mode   TEXT NOT NULL,
    holder TEXT NOT NULL
);
INSERT OR IGNORE INTO meta VALUES ('fence', 0);
"""


@dataclass(frozen=True)
class Saved:
    fence: int
    grants: list[SavedGrant]
    delays: list[SavedDelay]


@dataclass
class Change:
    """One transaction's worth of changes, built from the table's effects in order.

    Per token the last word wins (``None`` deletes), so a grant that starts and
    ends within one call leaves no row behind.
    """

    fence: int = 0
    grants: dict[int, SavedGrant | None] = field(default_factory=dict)
    delays: dict[int, SavedDelay | None] = field(default_factory=dict)

    def empty(self) -> bool:
        return not (self.grants or self.delays)


def check_pragmas(db: sqlite3.Connection, path: Path) -> None:
    """Refuse a lock database that does not run in WAL mode with synchronous=FULL (or EXTRA)."""
    mode = str(db.execute("PRAGMA journal_mode").fetchone()[0]).lower()
    sync = int(db.execute("PRAGMA synchronous").fetchone()[0])
    if mode != "wal" or sync < 2:
        raise StateError(f"{path}: the lock database must run with journal_mode=wal and "
                         f"synchronous=FULL (got {mode}, synchronous={sync})",
                         hint="the filesystem may not support WAL; keep ~/.agents on a local disk")


class LockStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        private_dir(path.parent)
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            check_pragmas(self._db, path)
            quick = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if quick != "ok":
                raise StateError(f"{path}: lock database is damaged ({quick})",
                                 hint="stop meshd and move the file aside; locks are then lost")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{path}: lock database is unreadable: {exc}",
                             hint="stop meshd and move the file aside; locks are then lost") from exc
        with contextlib.suppress(OSError):
            os.chmod(path, 0o600)

    def load(self) -> Saved:
        fence = int(self._db.execute("SELECT value FROM meta WHERE key='fence'").fetchone()[0])
        grants = [SavedGrant(int(t), str(tg), Mode(m), str(h), float(ttl), str(r)) for t, tg, m, h, ttl, r
                  in self._db.execute("SELECT token, target, mode, holder, ttl_s, request_id "
                                      "FROM grants ORDER BY token")]
        delays = [SavedDelay(int(t), str(tg), Mode(m), str(h)) for t, tg, m, h
                  in self._db.execute("SELECT token, target, mode, holder FROM delays ORDER BY token")]
        return Saved(fence, grants, delays)

    def commit(self, change: Change) -> None:
        """Write ``change`` in one durable transaction; returns only after it is on disk."""
        try:
            with self._tx():
                self._db.execute("UPDATE meta SET value = MAX(value, ?) WHERE key='fence'",
                                 (change.fence,))
                self._apply("grants", change.grants)
                self._apply("delays", change.delays)
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: lock database write failed: {exc}",
                             hint="check free disk space; meshd must restart") from exc

    def integrity(self) -> str:
        return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def _apply(self, table: str, rows: Mapping[int, tuple[object, ...] | None]) -> None:
        # table is one of two literals above, never input
        self._db.executemany(f"DELETE FROM {table} WHERE token=?",
                             [(t,) for t, row in rows.items() if row is None])
        width = 6 if table == "grants" else 4
        self._db.executemany(f"INSERT OR REPLACE INTO {table} VALUES ({','.join('?' * width)})",
                             [tuple(row) for row in rows.values() if row is not None])

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
