"""SQLite journal store (WAL, synchronous=FULL) with a JSON-lines audit mirror.

Owns ``journal.db`` and ``audit.jsonl``.  Blocking: the daemon calls it from a
worker thread (``asyncio.to_thread``), one call at a time.

Durability: an append is acknowledged only after the transaction commits with
``synchronous=FULL``.  The audit line is written after the commit; on start the
store re-mirrors any committed events missing from the audit file, so the
mirror may lag after a crash but never holds an event the journal lacks.
Every daemon start bumps ``generation`` (Cassandra-style) so a restarted host
is recognisable, and ``seq`` continues from the stored maximum: an
``(origin, seq)`` is never reused.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from meshd.errors import StateError
from meshd.files import private_dir
from meshd.journal.event import Event

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    origin  TEXT    NOT NULL,
    seq     INTEGER NOT NULL,
    lamport INTEGER NOT NULL,
    time    REAL    NOT NULL,
    kind    TEXT    NOT NULL,
    body    TEXT    NOT NULL,
    PRIMARY KEY (origin, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_order ON events (lamport, origin, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class Journal:
    """The local journal.  ``origin`` is this host's name."""

    def __init__(self, path: Path, audit: Path, origin: str) -> None:
        self.path, self.audit_path, self.origin = path, audit, origin
        self._lock = threading.Lock()
        private_dir(path.parent)
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._check_pragmas()
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{path}: journal is unreadable: {exc}",
                             hint="move the file aside; peers will send their events back") from exc
        with contextlib.suppress(OSError):
            os.chmod(path, 0o600)
        self.generation = self._bump_generation()
        self._lamport = self._scalar("SELECT COALESCE(MAX(lamport), 0) FROM events")
        self._seq = self._scalar("SELECT COALESCE(MAX(seq), 0) FROM events WHERE origin=?",
                                 (origin,))
        self._vv = self._load_vv()
        self._resync_audit()

    def _check_pragmas(self) -> None:
        mode = self._db.execute("PRAGMA journal_mode").fetchone()[0]
        sync = self._db.execute("PRAGMA synchronous").fetchone()[0]
        if mode != "wal" or sync < 2:
            raise StateError(f"{self.path}: journal must run in WAL mode with synchronous=FULL "
                             f"(got {mode}, {sync})")

    def _scalar(self, sql: str, args: tuple[object, ...] = ()) -> int:
        return int(self._db.execute(sql, args).fetchone()[0])

    def _bump_generation(self) -> int:
        with self._tx():
            row = self._db.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
            gen = int(row[0]) + 1 if row else 1
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)", (str(gen),))
        return gen

    @contextlib.contextmanager
    def _tx(self):  # type: ignore[no-untyped-def]
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @property
    def lamport(self) -> int:
        return self._lamport

    @property
    def vv(self) -> dict[str, int]:
        """Version vector: per origin, the highest seq such that 1..seq are all here."""
        with self._lock:
            return dict(self._vv)

    def _load_vv(self) -> dict[str, int]:
        vv: dict[str, int] = {}
        rows = self._db.execute("SELECT origin, seq FROM events ORDER BY origin, seq").fetchall()
        for origin, seq in rows:
            if seq == vv.get(origin, 0) + 1:
                vv[origin] = seq
        return vv

    def append(self, kind: str, body: dict[str, object], now: float) -> Event:
        """Write one local event durably and mirror it; returns it with seq and lamport."""
        return self.append_many([(kind, body)], now)[0]

    def append_many(self, items: list[tuple[str, dict[str, object]]], now: float) -> list[Event]:
        with self._lock:
            events = []
            seq, lamport = self._seq, self._lamport
            for kind, body in items:
                seq += 1
                lamport += 1
                events.append(Event(self.origin, seq, lamport, now, kind, dict(body)))
            try:
                with self._tx():
                    self._db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?)",
                                         [_row(e) for e in events])
            except sqlite3.Error as exc:
                raise StateError(f"{self.path}: journal write failed: {exc}",
                                 hint="check free disk space") from exc
            self._seq, self._lamport = seq, lamport
            if self._vv.get(self.origin, 0) == events[0].seq - 1:
                self._vv[self.origin] = seq
            self._mirror(events)
            return events

    def ingest(self, events: Iterable[Event]) -> list[Event]:
        """Insert events from peers; idempotent.  Returns the ones that were new.

        Only events that extend an origin's contiguous prefix are taken (the caller asks
        for the rest with its version vector), so the version vector never has holes and
        each origin's events are applied in seq order.  Events of our own origin coming
        back (after this host lost its journal) move our seq past them: an
        ``(origin, seq)`` is never reused.
        """
        with self._lock:
            new = []
            with self._tx():
                for e in sorted(events, key=lambda e: (e.origin, e.seq)):
                    if e.seq != self._vv.get(e.origin, 0) + 1:
                        continue
                    cur = self._db.execute("INSERT OR IGNORE INTO events VALUES (?,?,?,?,?,?)",
                                           _row(e))
                    self._vv[e.origin] = e.seq
                    if cur.rowcount:
                        new.append(e)
                        self._lamport = max(self._lamport, e.lamport)
                        if e.origin == self.origin:
                            self._seq = max(self._seq, e.seq)
            self._mirror(new)
            return new

    def all(self) -> list[Event]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM events ORDER BY lamport, origin, seq").fetchall()
        return [_event(r) for r in rows]

    def since(self, vv: dict[str, int], limit: int = 100_000) -> list[Event]:
        """Events the holder of version vector ``vv`` lacks, in (origin, seq) order."""
        out: list[Event] = []
        with self._lock:
            for origin, top in self._vv.items():
                have = int(vv.get(origin, 0))
                if have >= top:
                    continue
                rows = self._db.execute(
                    "SELECT * FROM events WHERE origin=? AND seq>? ORDER BY seq LIMIT ?",
                    (origin, have, limit - len(out))).fetchall()
                out += [_event(r) for r in rows]
                if len(out) >= limit:
                    break
        return out

    def tail(self, n: int, kinds: tuple[str, ...] = ()) -> list[Event]:
        with self._lock:
            if kinds:
                marks = ",".join("?" * len(kinds))
                rows = self._db.execute(
                    f"SELECT * FROM events WHERE kind IN ({marks}) "
                    "ORDER BY lamport DESC, origin DESC, seq DESC LIMIT ?",
                    (*kinds, n)).fetchall()
            else:
                rows = self._db.execute("SELECT * FROM events ORDER BY lamport DESC, "
                                        "origin DESC, seq DESC LIMIT ?", (n,)).fetchall()
        return [_event(r) for r in reversed(rows)]

    def count(self) -> int:
        with self._lock:
            return self._scalar("SELECT COUNT(*) FROM events")

    def _mirror(self, events: list[Event]) -> None:
        if not events:
            return
        data = "".join(e.to_json() + "\n" for e in events).encode()
        try:
            fd = os.open(self.audit_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StateError(f"{self.audit_path}: audit mirror write failed: {exc}") from exc

    def _resync_audit(self) -> None:
        """After a crash between commit and mirror, append what the mirror lacks.

        A torn last line (no newline) is cut off first; its event, being in
        the journal, is then written again whole.
        """
        seen: set[tuple[str, int]] = set()
        try:
            raw = self.audit_path.read_bytes()
        except FileNotFoundError:
            raw = b""
        if raw and not raw.endswith(b"\n"):
            keep = raw.rfind(b"\n") + 1
            os.truncate(self.audit_path, keep)
            raw = raw[:keep]
        for line in raw.splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                d = json.loads(line)
                seen.add((d["origin"], int(d["seq"])))
        missing = [e for e in self.all() if e.key not in seen]
        self._mirror(missing)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _row(e: Event) -> tuple[object, ...]:
    return (e.origin, e.seq, e.lamport, e.time, e.kind,
            json.dumps(e.body, sort_keys=True, separators=(",", ":"), ensure_ascii=False))


def _event(r: tuple[Any, ...]) -> Event:
    origin, seq, lamport, time, kind, body = r
    return Event(str(origin), int(seq), int(lamport), float(time), str(kind), json.loads(body))
