"""L4 (power cuts): simulated power loss never loses an acknowledged grant or regresses the counter.

SIGKILL (tests/test_locks_crash.py) only crashes the process; the page cache survives.  Here
the disk itself is modelled by the crash shim (tests/crashshim/crashshim.c, an LD_PRELOAD
library this test builds with ``cc``, cached in the temp dir by source hash): for the lock
home's directory it records what each fsync/fdatasync made durable -- a file's content at its
sync, the directory's names (creations, unlinks) at the directory's sync.  A power cut is:
SIGKILL the process, then replace every file by its durable image (a file whose name was never
made durable is gone, an unlink never made durable is undone, a file never synced is empty,
the ``-shm`` shared memory is always gone).  Half of the cuts also *tear* (RELIABILITY J2):
each 512-byte sector written since the last sync reaches the disk or not, at random -- any
reordering of unsynced writes within and across files; a file that grew keeps a random part of
its new length, sectors not written read as zeros.

A child runs the real LockService (real SQLite, WAL, synchronous=FULL) in that directory with
the shim preloaded, grants and releases at random (and now and then restarts cleanly, which
deletes the WAL), and prints every grant (G) and release (R) only after the call returned; X
before a call that may end a grant, K after it if it did not.  It is killed at a random moment
after a random number of acknowledgements, or by the shim at the start of its N-th sync (the
commit is written, none of it durable), of the checkpoint's sync of locks.db, or of one of the
first syncs after a checkpoint (the WAL restarts).  After each cut the parent opens a copy of
what is left, without the shim, and checks: it opens (quick_check) and ``PRAGMA
integrity_check`` is ok; every acknowledged grant not acknowledged as released is there with
its token, holder, target and mode; no acknowledged release came back; the stored fence is >=
every token ever acknowledged and the next token is larger; no token was acknowledged twice.
The next child starts on the cut files themselves, so recovery runs under the shim as well.

MESHD_POWERCUT_N sets the number of cuts (default 100; RELIABILITY L4 asks 1,000, which takes
about 5 minutes on 2 cores); MESHD_POWERCUT_SEED the seed (default 7).  The controls show the
model is not vacuous: rows written with synchronous=OFF survive SIGKILL but not the cut, and
the real LockService with its connection switched to synchronous=OFF or NORMAL fails the checks.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshd.errors import StateError
from meshd.locks.service import LockService
from meshd.locks.store import LockStore
from meshd.locks.table import Granted

CUTS = int(os.environ.get("MESHD_POWERCUT_N", "100"))
SEED = int(os.environ.get("MESHD_POWERCUT_SEED", "7"))
SHIM_SRC = Path(__file__).parent / "crashshim" / "crashshim.c"
SECTOR = 512

CHILD = r"""
import random, sys
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from lockwork import step
from meshd.locks.service import LockService

db, seed, sync = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rnd = random.Random(seed)

def start():
    svc = LockService(db, lock_delay_s=0)
    if sync != "FULL":                           # the controls: a store that syncs less
        svc._store._db.execute(f"PRAGMA synchronous={sync}")
    return svc, [(g.target, g.holder, g.token) for g in svc.snapshot().result.grants]

svc, held = start()
print("ready", flush=True)
while True:
    if rnd.random() < 0.01:                      # a clean restart: SQLite checkpoints, deletes the WAL
        svc.close()
        svc, held = start()
        continue
    g = step(svc, held, rnd)
    if g is not None:
        print("G", g.token, g.holder, g.target, g.mode.value, flush=True)
"""

# A line of the child: kind, token, and for G the grant's (holder, target, mode).
Line = tuple[str, int, tuple[str, ...]]


# -- the shim ---------------------------------------------------------------------------------
def _shim() -> Path:
    """The compiled shim, cached by the hash of its source in a private dir under the temp dir
    (it is preloaded, so nobody else may be able to put it there)."""
    src = SHIM_SRC.read_bytes()
    cache = Path(tempfile.gettempdir()) / f"meshd-crashshim-{os.getuid()}"
    cache.mkdir(mode=0o700, exist_ok=True)
    st = cache.stat(follow_symlinks=False)
    assert st.st_uid == os.getuid() and st.st_mode & 0o077 == 0 and not cache.is_symlink(), \
        f"{cache} is not a private directory"
    out = cache / f"crashshim-{hashlib.sha256(src).hexdigest()[:16]}.so"
    if out.exists():
        return out
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        reason = "no C compiler (cc/gcc) to build the crash shim; scripts/test.sh installs gcc"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"prerequisite missing in CI: {reason}", pytrace=False)
        pytest.skip(reason)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    res = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(tmp), str(SHIM_SRC), "-ldl"],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.fail(f"the crash shim does not build:\n{res.stderr}", pytrace=False)
    os.replace(tmp, out)
    return out


@dataclass
class Disk:
    """The watched directory (what the page cache shows) and the shim's record of what is durable."""

    live: Path
    durable: Path
    shim: Path

    @classmethod
    def make(cls, root: Path) -> Disk:
        disk = cls(root / "home", root / "durable", _shim())
        disk.live.mkdir()
        disk.durable.mkdir()
        disk.settle()
        return disk

    def env(self) -> dict[str, str]:
        preload = " ".join(p for p in (str(self.shim), os.environ.get("LD_PRELOAD", "")) if p)
        return {**os.environ, "LD_PRELOAD": preload, "CRASHSHIM_DIR": str(self.live),
                "CRASHSHIM_DURABLE": str(self.durable), "CRASHSHIM_FAKE_SYNC": "1"}

    def settle(self) -> None:
        """Everything on the disk now is durable: the state a (re)boot starts from."""
        for p in self.durable.iterdir():
            p.unlink()
        keys = []
        for p in sorted(self.live.iterdir()):
            keys.append(f"{p.name}@{p.stat(follow_symlinks=False).st_ino}")
            shutil.copyfile(p, self.durable / keys[-1])
        (self.durable / "names").write_text("".join(f"{k}\n" for k in keys))

    def cut(self, tear: random.Random | None = None) -> Counter[str]:
        """Power cut (the process is already dead): every file becomes what was made durable.

        ``tear``: also let a random part of the unsynced sectors reach the disk.  Returns counts:
        per file name, cuts that dropped some of its writes; files that vanished; torn sectors.
        """
        keys = (self.durable / "names").read_text().splitlines()    # "<name>@<inode>[~<n>]"
        now: dict[str, bytes] = {}                                   # key -> what the page cache held
        for p in self.live.iterdir():
            now[f"{p.name}@{p.stat(follow_symlinks=False).st_ino}"] = p.read_bytes()
            p.unlink()
        stats: Counter[str] = Counter()
        for key in keys:
            name = key.rsplit("@", 1)[0]
            if name.endswith("-shm"):                   # shared memory: never on the disk
                continue
            image = (self.durable / key).read_bytes() if (self.durable / key).exists() else b""
            content, live = image, now.get(key)
            if live is not None:                        # the same file, maybe with unsynced writes
                if tear is not None:
                    content, kept = _tear(image, live, tear)
                    stats["torn sectors"] += kept
                stats[f"{name}: unsynced bytes dropped"] += content != live
            (self.live / name).write_bytes(content)
        stats["files gone (name never durable)"] += sum(
            1 for key in now if not key.rsplit("@", 1)[0].endswith("-shm") and key not in keys)
        stats["unlinked files back (unlink never durable)"] += sum(
            1 for key in keys if "~" in key and not key.rsplit("@", 1)[0].endswith("-shm"))
        return stats


def _tear(old: bytes, new: bytes, rnd: random.Random) -> tuple[bytes, int]:
    """What the disk may hold when the power went out between writing ``new`` and syncing it.

    Every 512-byte sector that differs is the new one with a probability p drawn per file; a
    file that grew keeps a random number of sectors of its new length (those not written read
    as zeros), a file that shrank has its old or its new length.  Bytes equal in old and new
    never change (SQLite's powersafe-overwrite assumption).  Returns the content and how many
    changed sectors it kept.
    """
    if len(new) > len(old):
        size = min(len(new), len(old) + rnd.randint(0, -(-(len(new) - len(old)) // SECTOR)) * SECTOR)
    else:
        size = rnd.choice((len(old), len(new)))
    base, cand = old[:size].ljust(size, b"\0"), new[:size].ljust(size, b"\0")
    out, kept, p = bytearray(base), 0, rnd.random()
    for i in range(0, size, SECTOR):
        if base[i:i + SECTOR] != cand[i:i + SECTOR] and rnd.random() < p:
            out[i:i + SECTOR] = cand[i:i + SECTOR]
            kept += 1
    return bytes(out), kept


# -- one crash point ------------------------------------------------------------------------
def _parse(line: str) -> Line | None:
    if not line.endswith("\n") or line == "ready\n":    # a line cut by the kill was never acknowledged
        return None
    kind, token, *rest = line.split()
    return kind, int(token), tuple(rest)


@dataclass(frozen=True)
class Plan:
    """Where a run ends: at the child's ``kill_at``-th sync (only syncs of ``on``, only after a
    sync of ``after``), or ``delay_s`` after its ``quota``-th grant; and whether the cut tears."""

    kill_at: int = 0
    on: str = ""
    after: str = ""
    quota: int = 0
    delay_s: float = 0.0
    tear: bool = False

    @classmethod
    def draw(cls, rnd: random.Random) -> Plan:
        tear, r = rnd.random() < 0.5, rnd.random()
        if r < 0.5:
            return cls(quota=rnd.randint(1, 60), delay_s=rnd.random() * 0.003, tear=tear)
        if r < 0.8:
            return cls(kill_at=rnd.randint(1, 90), tear=tear)
        if r < 0.9:                                     # in a checkpoint: the db pages are written
            return cls(kill_at=1, on="locks.db", tear=tear)
        return cls(kill_at=rnd.randint(1, 4), after="locks.db", tear=tear)   # the WAL restarts

    @property
    def label(self) -> str:
        if not self.kill_at:
            return "killed at a random moment"
        if self.on:
            return "killed syncing locks.db (in a checkpoint)"
        return "killed just after a checkpoint" if self.after else "killed at a random sync"

    def env(self) -> dict[str, str]:
        return {"CRASHSHIM_KILL_AT": str(self.kill_at), "CRASHSHIM_KILL_ON": self.on,
                "CRASHSHIM_KILL_AFTER": self.after}


def _run_once(disk: Disk, seed: int, log: list[Line], plan: Plan, sync: str = "FULL") -> None:
    """Run a child on the disk until it is killed as planned; its acknowledgements go to ``log``."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(disk.live / "locks.db"), str(seed), sync,
                                 str(Path(__file__).parent / "fixtures")],
                                stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1,
                                env={**disk.env(), **plan.env()})
        hung = threading.Event()

        def hang_up() -> None:
            hung.set()
            proc.kill()

        watchdog = threading.Timer(60, hang_up)
        watchdog.start()
        try:
            assert proc.stdout is not None
            if not plan.kill_at:
                seen = 0
                while seen < plan.quota and (line := proc.stdout.readline()):
                    if (parsed := _parse(line)) is not None:
                        log.append(parsed)
                        seen += parsed[0] == "G"
                time.sleep(plan.delay_s)                    # land somewhere inside the next operation
                proc.send_signal(signal.SIGKILL)
            for line in proc.stdout:                        # what it acknowledged before dying
                if (parsed := _parse(line)) is not None:
                    log.append(parsed)
            proc.wait()
        finally:
            watchdog.cancel()
        err.seek(0)
        assert not hung.is_set(), "the child hung"
        assert proc.returncode == -signal.SIGKILL, f"the child did not die by SIGKILL:\n{err.read()}"


def _open_copy(src: Path, dst: Path) -> LockStore:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    return LockStore(dst / "locks.db")


def _fence_of(src: Path, scratch: Path) -> int:
    store = _open_copy(src, scratch)
    try:
        return store.load().fence
    finally:
        store.close()


def _check(disk: Disk, log: list[Line], scratch: Path) -> tuple[list[str], int]:
    """Open a copy of the disk without the shim: everything that breaks the promise, in words,
    and the stored fence."""
    try:
        store = _open_copy(disk.live, scratch)          # quick_check, pragmas
    except StateError as exc:
        return [f"the store does not open after the cut: {exc}"], -1
    try:
        saved, integrity = store.load(), store.integrity()
    finally:
        store.close()
    problems = [] if integrity == "ok" else [f"integrity_check: {integrity}"]
    last: dict[int, str] = {}                           # G/K: held; X: in flight; R: released
    grants: dict[int, tuple[str, ...]] = {}
    for kind, token, rest in log:
        last[token] = kind
        if kind == "G":
            grants[token] = rest
    present = {g.token: (g.holder, g.target, g.mode.value) for g in saved.grants}
    lost = sorted(t for t, k in last.items() if k in "GK" and t not in present)
    if lost:
        problems.append(f"acknowledged grants were lost: {lost}")
    wrong = sorted(t for t, rest in grants.items()
                   if last[t] in "GK" and t in present and present[t] != rest)
    if wrong:
        problems.append(f"grants came back changed: {[(t, grants[t], present[t]) for t in wrong]}")
    back = sorted(t for t, k in last.items() if k == "R" and t in present)
    if back:
        problems.append(f"acknowledged releases came back: {back}")
    tokens = [t for k, t, _ in log if k == "G"]
    top = max(tokens, default=0)
    if saved.fence < top:
        problems.append(f"the fencing counter went back: {saved.fence} < {top}")
    if tokens != sorted(set(tokens)):
        problems.append("a token was acknowledged twice or out of order")
    svc = LockService(scratch / "locks.db")
    try:
        res = svc.acquire("/powercut/probe", "write", "probe").result
    finally:
        svc.close()
    if not (isinstance(res, Granted) and res.token > top):
        problems.append(f"the next token is not above every token acknowledged ({top}): {res}")
    return problems, saved.fence


def _power_cuts(tmp_path: Path, n: int, seed: int, *, sync: str = "FULL",
                stop_at_first_problem: bool = False) -> tuple[Counter[str], list[str]]:
    """``n`` power cuts in a row on one lock home; counts of what happened, and the problems."""
    disk = Disk.make(tmp_path)
    plans, tears = random.Random(seed), random.Random(seed + 1)   # the plan does not depend on timing
    log: list[Line] = []
    stats: Counter[str] = Counter()
    problems: list[str] = []
    for i in range(n):
        plan = Plan.draw(plans)
        if sync != "FULL":                              # the controls: plain kills, nothing torn
            plan = Plan(quota=plan.quota or 30, delay_s=plan.delay_s)
        acked = len(log)
        _run_once(disk, seed * 100_000 + i, log, plan, sync)
        stats[plan.label] += 1
        stats["acknowledgements"] += len(log) - acked
        fence_killed = _fence_of(disk.live, tmp_path / "killed")    # what SIGKILL alone would leave
        stats.update(disk.cut(tears if plan.tear else None))
        stats["torn cuts" if plan.tear else "clean cuts"] += 1
        found, fence = _check(disk, log, tmp_path / "check")
        stats["cuts that undid a written, unacknowledged commit"] += fence < fence_killed
        problems += [f"cut {i} ({plan}): {p}" for p in found]
        if found and stop_at_first_problem:
            break
        disk.settle()
    stats["tokens acknowledged"] = sum(k == "G" for k, _, _ in log)
    return stats, problems


# -- the tests ------------------------------------------------------------------------------
def test_power_cuts_never_lose_an_acknowledged_grant_or_regress_the_counter(tmp_path: Path) -> None:
    start = time.monotonic()
    stats, problems = _power_cuts(tmp_path, CUTS, SEED)
    print(f"\n{CUTS} power cuts in {time.monotonic() - start:.1f} s: "
          + ", ".join(f"{k}: {v}" for k, v in sorted(stats.items())))
    assert not problems, "\n".join(problems)
    # the cuts land where it matters: unsynced writes existed and were dropped or torn
    if CUTS >= 20:
        assert stats["locks.db-wal: unsynced bytes dropped"] > 0
        assert stats["cuts that undid a written, unacknowledged commit"] > 0
        assert stats["torn sectors"] > 0


def test_control_the_shim_drops_what_was_not_synced(tmp_path: Path) -> None:
    """synchronous=OFF rows survive SIGKILL but not the power cut; synchronous=FULL rows survive both."""
    disk = Disk.make(tmp_path)
    code = r"""
import sqlite3, sys, time
for sync in ("OFF", "FULL"):
    db = sqlite3.connect(sys.argv[1] + f"/{sync}.db", isolation_level=None)
    db.execute(f"PRAGMA synchronous={sync}")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x INTEGER)")
    for i in range(20):
        db.execute("INSERT INTO t VALUES (?)", (i,))
print("done", flush=True)
time.sleep(60)
"""
    proc = subprocess.Popen([sys.executable, "-c", code, str(disk.live)], stdout=subprocess.PIPE, text=True,
                            env=disk.env())
    assert proc.stdout is not None and proc.stdout.readline() == "done\n"
    proc.kill()
    proc.wait()

    def rows(root: Path, sync: str) -> int:
        db = sqlite3.connect(root / f"{sync}.db")
        try:
            return int(db.execute("SELECT count(*) FROM t").fetchone()[0])
        except sqlite3.OperationalError:                # no such table: the file came back empty
            return 0
        finally:
            db.close()

    killed = tmp_path / "killed"
    shutil.copytree(disk.live, killed)
    assert (rows(killed, "OFF"), rows(killed, "FULL")) == (20, 20)     # the page cache survives a kill
    disk.cut()
    assert (rows(disk.live, "OFF"), rows(disk.live, "FULL")) == (0, 20)
    assert not (disk.live / "FULL.db-shm").exists()


@pytest.mark.parametrize("sync", ["OFF", "NORMAL"])
def test_control_a_store_that_syncs_less_fails_the_checks(tmp_path: Path, sync: str) -> None:
    """The real LockService with its connection switched to synchronous=OFF or NORMAL (in WAL
    mode NORMAL syncs only at checkpoints) after the open: the same checks must catch it."""
    stats, problems = _power_cuts(tmp_path, 5, 3, sync=sync, stop_at_first_problem=True)
    assert any("acknowledged grants were lost" in p for p in problems), (stats, problems)
    print(f"\nsynchronous={sync}: {problems[0][:200]}")


def test_tear_changes_only_unsynced_sectors() -> None:
    rnd = random.Random(1)
    for _ in range(200):
        old = rnd.randbytes(rnd.randrange(0, 6 * SECTOR))
        new = bytearray(old[:rnd.randrange(0, len(old) + 1)] if rnd.random() < 0.2 else old)
        new += rnd.randbytes(rnd.randrange(0, 4 * SECTOR))
        for _ in range(rnd.randrange(4)):                # overwrite a random range in place
            a = rnd.randrange(len(new) + 1)
            b = rnd.randrange(a, len(new) + 1)
            new[a:b] = rnd.randbytes(b - a)
        out, _ = _tear(old, bytes(new), rnd)
        assert len(out) in (len(old), len(new)) or len(old) < len(out) <= len(new)
        for i in range(0, len(out), SECTOR):
            sector = out[i:i + SECTOR]
            choices = (old[i:i + SECTOR].ljust(len(sector), b"\0")[:len(sector)],
                       new[i:i + SECTOR].ljust(len(sector), b"\0")[:len(sector)])
            assert sector in choices
