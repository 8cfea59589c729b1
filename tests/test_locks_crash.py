"""L4: SIGKILL the lock home right after grants are acknowledged; nothing acknowledged is lost.

A child process runs a LockService and prints every grant (G) and release (R; an upgrade
releases the grant it replaces) only after the call returned, i.e. after the commit, and X
before a call that may end a grant (K after it, if it did not).  The parent kills it with
SIGKILL at random points, reopens the database and checks: every acknowledged grant not
acknowledged as released is there, no acknowledged release came back, the fencing counter
is >= every token printed and the next token is larger, and ``PRAGMA integrity_check`` is ok.

MESHD_LOCK_KILLS sets the number of kills (default 20; RELIABILITY L4 asks 200, PR 50).
Process crashes only: power loss (unsynced page cache) needs the crash shim, not done here.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from meshd.locks.service import LockService
from meshd.locks.store import LockStore
from meshd.locks.table import Granted

FIXTURES = Path(__file__).parent / "fixtures"
KILLS = int(os.environ.get("MESHD_LOCK_KILLS", "20"))

CHILD = r"""
import random, sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from lockwork import step
from meshd.locks.service import LockService

db, seed = Path(sys.argv[1]), int(sys.argv[2])
rnd = random.Random(seed)
svc = LockService(db, lock_delay_s=0)
held = [(g.target, g.holder, g.token) for g in svc.snapshot().result.grants]
print("ready", flush=True)
while True:
    g = step(svc, held, rnd)
    if g is not None:
        print("G", g.token, flush=True)
"""


def _run_once(db: Path, seed: int, rnd: random.Random, log: list[tuple[str, int]]) -> None:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(db), str(seed), str(FIXTURES)],
                            stdout=subprocess.PIPE, text=True, bufsize=1)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    quota = rnd.randint(1, 60)
    seen = 0
    deadline = time.monotonic() + 20
    while seen < quota and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line.endswith("\n"):
            break
        kind, token = line.split()
        log.append((kind, int(token)))
        seen += kind == "G"
    time.sleep(rnd.random() * 0.003)                # land somewhere inside the next operation
    os.kill(proc.pid, signal.SIGKILL)
    rest = proc.stdout.read()                       # what it acknowledged before dying
    proc.wait()
    for line in rest.splitlines(keepends=True):
        if line.endswith("\n"):                   # a line cut by the kill was never acknowledged
            kind, token = line.split()
            log.append((kind, int(token)))
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_never_loses_an_acknowledged_grant_or_regresses_the_counter(tmp_path: Path) -> None:
    db = tmp_path / "locks.db"
    rnd = random.Random(4)
    log: list[tuple[str, int]] = []
    for i in range(KILLS):
        _run_once(db, 1000 + i, rnd, log)
        status: dict[int, str] = {}             # G/K: held; X: in flight; R: released
        for kind, token in log:
            status[token] = kind
        granted = {t for k, t in log if k == "G"}
        must = {t for t, k in status.items() if k in "GK"}
        released = {t for t, k in status.items() if k == "R"}
        store = LockStore(db)
        saved = store.load()
        assert store.integrity() == "ok"
        store.close()
        present = {g.token for g in saved.grants}
        assert must <= present, "an acknowledged grant was lost"
        assert not (present & released), "an acknowledged release came back"
        assert saved.fence >= max(granted, default=0), "the fencing counter went back"
    tokens = [t for k, t in log if k == "G"]
    assert tokens == sorted(set(tokens)), "a token was issued twice or out of order"
    svc = LockService(db)
    res = svc.acquire("/fresh", "write", "z").result
    assert isinstance(res, Granted) and res.token > max(tokens)
    svc.close()

