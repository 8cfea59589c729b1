"""Events recorded while the daemon was down, imported when it starts.

A degraded ``notify-pane`` cannot append to the journal (the daemon owns the
sequence numbers), so it appends a JSON line to ``meshd/pending.jsonl`` under
an flock; the daemon journals those lines at start and truncates the file.
Nothing is lost, and nothing is journaled twice: the file is truncated in
the same flock after a durable journal commit.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from typing import Any

from meshd.files import private_dir
from meshd.journal.store import Journal
from meshd.paths import StatePaths


def _path(paths: StatePaths) -> os.PathLike[str]:
    return paths.state_dir / "pending.jsonl"


def record(paths: StatePaths, kind: str, body: dict[str, Any]) -> None:
    private_dir(paths.state_dir)
    line = json.dumps({"kind": kind, "body": body, "time": time.time()}) + "\n"
    fd = os.open(_path(paths), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def drain(paths: StatePaths, journal: Journal) -> int:
    try:
        fd = os.open(_path(paths), os.O_RDWR)
    except FileNotFoundError:
        return 0
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with os.fdopen(os.dup(fd), "rb") as fh:
            raw = fh.read()
        items: list[tuple[str, dict[str, Any]]] = []
        for line in raw.splitlines():
            try:
                d = json.loads(line)
                items.append((str(d["kind"]), {**d["body"], "recorded_at": d["time"],
                                               "degraded": True}))
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line from a crash mid-write
        if items:
            journal.append_many(items, time.time())
        os.ftruncate(fd, 0)
        return len(items)
    finally:
        os.close(fd)
