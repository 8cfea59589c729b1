"""Locks across hosts over real SSH: RELIABILITY.md L1, L2 and L6 in CI-sized form.

Three hosts of the namespace lab (tests/lab.py, docs/lab.md), each with its own user, sshd,
tmux and meshd.  Locks are taken on ``HOST:/path`` targets homed on another host, so every
acquire, renew, release and check crosses a real SSH link.

The resource side is :class:`FencedStore`: one serialised "storage" in the test process that
holders reach through a Unix socket.  It accepts a fenced write ``(home, path, token, mode,
holder)`` only if ``mesh lock check HOME:path --token N``, run on the home at that moment,
exits 0, and records every attempt in order with its times (monotonic and wall; every
namespace shares the kernel clock).

Lease settings are set per test through the daemon's environment (``MESHD_LOCKS_*``), so the
figures are checked with short leases.  ``MESHD_L1_S`` sets the nemesis length of L1 (default
60 s; RELIABILITY's PR size is 300).  Needs root: skipped with the reason otherwise, failed
under CI=true.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import until
from lab import Host, Lab

from meshd.locks.modes import Mode, compatible
from meshd.locks.table import covers, key_of, overlaps

LINKS = {"MESHD_LINKS_REMOTE_COMMAND": "meshd link", "MESHD_LINKS_ANTI_ENTROPY_S": "1",
         "MESHD_LINKS_BACKOFF_MAX_S": "1", "MESHD_LINKS_CONNECT_TIMEOUT_S": "3",
         "MESHD_LINKS_KEEPALIVE_INTERVAL_S": "1", "MESHD_LINKS_KEEPALIVE_COUNT": "3",
         "MESHD_LINKS_DEAD_AFTER_S": "4", "MESHD_DISCOVERY_DEBOUNCE_MS": "5"}
LOCK_KINDS = ("lock.granted", "lock.released", "lock.expired")

# The command a holder runs under `mesh lock run`: fenced writes through the store's socket,
# with the token `run` passes in MESH_LOCK_TOKEN.  argv: socket home files(comma) count gap.
WRITER = r"""
import json, os, random, socket, sys, time
sock, home, files, n, gap = sys.argv[1], sys.argv[2], sys.argv[3].split(","), int(sys.argv[4]), \
    float(sys.argv[5])
req = {"home": home, "token": int(os.environ["MESH_LOCK_TOKEN"]),
       "mode": os.environ["MESH_LOCK_MODE"], "holder": os.environ["MESH_LOCK_HOLDER"]}
i = 0
while n <= 0 or i < n:
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    s.sendall((json.dumps({**req, "path": random.choice(files)}) + "\n").encode())
    print(s.makefile().readline().strip(), flush=True)
    s.close()
    i += 1
    time.sleep(gap)
"""


@pytest.fixture(scope="module")
def lab_module() -> Iterator[Lab]:
    from lab import need_lab

    need_lab()
    with Lab(3, env=LINKS) as lab:
        yield lab


# -- helpers -------------------------------------------------------------------------------
def locks_env(ttl: float, lock_delay: float, grace: float) -> dict[str, str]:
    return {"MESHD_LOCKS_TTL_S": f"{ttl:g}", "MESHD_LOCKS_LOCK_DELAY_S": f"{lock_delay:g}",
            "MESHD_LOCKS_GRACE_S": f"{grace:g}"}


def up(h: Host, env: dict[str, str]) -> None:
    """`mesh up` with the lock settings in the daemon's environment."""
    r = h.mesh("up", "--timeout", "20", env=env, timeout=40)
    assert r.returncode == 0, f"{h.name}: mesh up: {r.stderr}{r.stdout}\n{h.log_tail(h.meshd_log)}"


def links_up(h: Host) -> bool:
    r = h.mesh("peers", "--json")
    if r.returncode != 0:
        return False
    peers = json.loads(r.stdout)
    return {p["host"] for p in peers if p["up"]} >= {p.name for p in h.peers}


def start_mesh(lab: Lab, env: dict[str, str]) -> None:
    for h in lab:
        up(h, env)
    for h in lab:
        until(functools.partial(links_up, h), 30, f"{h.name} linked with every host")


def mesh_json(h: Host, *args: str, timeout: float = 30) -> Any:
    r = h.mesh(*args, "--json", timeout=timeout)
    assert r.returncode == 0, f"{h.name}: mesh {' '.join(args)} exited {r.returncode}: {r.stderr}"
    return json.loads(r.stdout)


def lock_list(h: Host) -> dict[str, Any]:
    return dict(mesh_json(h, "lock", "list"))


def lock_events(h: Host) -> list[dict[str, Any]]:
    """The home's own lock events, in its journal order (origin = the home, by seq)."""
    r = h.mesh("log", "--json", "-n", "1000000", *(x for k in LOCK_KINDS for x in ("--kind", k)),
               timeout=60)
    assert r.returncode == 0, r.stderr
    return sorted((e for e in json.loads(r.stdout) if e["origin"] == h.name), key=lambda e: e["seq"])


def mesh_argv(lab: Lab, *args: str) -> list[str]:
    return [lab.python, "-m", "meshd.cli.mesh_entry", *args]


def children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


# -- the resource side ---------------------------------------------------------------------
@dataclass
class Attempt:
    n: int
    home: str
    path: str
    token: int
    mode: str
    holder: str
    accepted: bool
    rc: int
    t0: float          # monotonic, before the check started
    t1: float          # monotonic, after it answered
    w0: float          # the same two instants on the wall clock (to compare with journal times)
    w1: float
    why: str = ""


class FencedStore:
    """One serialised storage: a write is accepted only while `mesh lock check HOME:path
    --token N` on the home says valid.  Holders on the hosts reach it through a Unix socket
    (a path socket works across network namespaces)."""

    def __init__(self, lab: Lab, name: str) -> None:
        self.lab = lab
        self.path = lab.dir / f"{name}.sock"
        self.path.unlink(missing_ok=True)
        self.mu = threading.Lock()
        self.log: list[Attempt] = []
        self.srv = socket.socket(socket.AF_UNIX)
        self.srv.bind(str(self.path))
        os.chmod(self.path, 0o666)
        self.srv.listen(64)
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.closed = True
        self.srv.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> FencedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                req = json.loads(conn.makefile().readline())
                a = self.write(str(req["home"]), str(req["path"]), int(req["token"]),
                               str(req["mode"]), str(req["holder"]))
                conn.sendall(f"{'ok' if a.accepted else 'refused'} {a.n}\n".encode())
            except (OSError, ValueError, KeyError):
                return

    def write(self, home: str, path: str, token: int, mode: str, holder: str) -> Attempt:
        with self.mu:
            t0, w0 = time.monotonic(), time.time()
            try:
                r = self.lab[home].mesh("lock", "check", f"{home}:{path}", "--token", str(token),
                                        timeout=60)
                rc, why = r.returncode, r.stderr.strip()
            except subprocess.TimeoutExpired:
                rc, why = -1, "check timed out"
            a = Attempt(len(self.log), home, path, token, mode, holder, rc == 0, rc, t0,
                        time.monotonic(), w0, time.time(), why)
            self.log.append(a)
            return a

    def by(self, holder: str, token: int | None = None) -> list[Attempt]:
        with self.mu:
            return [a for a in self.log if a.holder == holder and token in (None, a.token)]


# -- offline checkers over the histories ---------------------------------------------------
@dataclass
class Life:
    """One grant in a home's journal: when it started and ended (wall time of the events)."""

    token: int
    target: str
    mode: str
    holder: str
    start: float
    end: float | None = None
    how: str = ""


@dataclass
class History:
    home: str
    lives: dict[int, Life] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)


def replay(home: str, events: list[dict[str, Any]]) -> History:
    """Rebuild a home's grant intervals in journal order, checking as it goes that tokens
    strictly increase in grant order and that no grant overlaps a live incompatible grant of
    another holder on an overlapping target."""
    h = History(home)
    live: dict[int, Life] = {}
    last = 0
    for e in events:
        b, kind, t = e["body"], e["kind"], float(e["time"])
        tok = int(b["token"])
        if kind == "lock.granted":
            if tok <= last:
                h.violations.append(f"{home}: token {tok} granted after token {last} "
                                    f"(journal seq {e['seq']}): not strictly increasing")
            last = max(last, tok)
            old = b.get("upgraded_from")
            if old is not None and int(old) in live:
                live.pop(int(old)).end, h.lives[int(old)].how = t, "upgraded"
            new = Life(tok, b["target"], b["mode"], b["holder"], t)
            for g in live.values():
                if (g.holder != new.holder and overlaps(key_of(g.target), key_of(new.target))
                        and not compatible(Mode(g.mode), Mode(new.mode))):
                    h.violations.append(
                        f"{home}: overlapping incompatible grants: token {tok} {new.mode} "
                        f"{new.target} to {new.holder} (seq {e['seq']}) while token {g.token} "
                        f"{g.mode} {g.target} of {g.holder} was live")
            live[tok] = h.lives[tok] = new
        elif tok in live:
            g = live.pop(tok)
            g.end, g.how = t, "expired" if kind == "lock.expired" else str(b.get("reason"))
        elif tok not in h.lives:
            h.violations.append(f"{home}: {kind} of token {tok} that was never granted (seq {e['seq']})")
    return h


def stale_writes(log: list[Attempt], homes: dict[str, History]) -> list[str]:
    """Accepted writes whose token was not live when the check started, by the grantor's
    history; and, per file, an accepted write with token t after an accepted incompatible
    write of another holder with token t' > t (a write that a newer grant should have
    fenced off)."""
    out = []
    for a in (a for a in log if a.accepted):
        life = homes[a.home].lives.get(a.token)
        if life is None:
            out.append(f"write #{a.n} accepted with token {a.token}, never granted on {a.home}")
        elif life.end is not None and life.end < a.w0:
            out.append(f"write #{a.n} {a.holder} {a.mode} {a.home}:{a.path} accepted with token "
                       f"{a.token} {a.w0 - life.end:.3f} s after it ended ({life.how})")
        elif life.holder != a.holder or not covers(key_of(life.target), key_of(a.path)):
            out.append(f"write #{a.n} accepted with token {a.token} of {life.holder} on "
                       f"{life.target}, sent by {a.holder} for {a.path}")
    newest: dict[tuple[str, str], list[Attempt]] = {}
    for a in (a for a in log if a.accepted):
        seen = newest.setdefault((a.home, a.path), [])
        for b in seen:
            if (b.token > a.token and b.holder != a.holder
                    and not compatible(Mode(b.mode), Mode(a.mode))):
                out.append(f"stale write #{a.n}: {a.holder} {a.mode} token {a.token} on "
                           f"{a.home}:{a.path} accepted after #{b.n} of {b.holder} {b.mode} "
                           f"with token {b.token}")
                break
        seen.append(a)
    return out


def test_checkers_flag_what_they_must() -> None:
    """The offline checkers themselves (no lab): each kind of violation is reported."""
    def ev(seq: int, kind: str, t: float, token: int, target: str, mode: str, holder: str,
           **more: Any) -> dict[str, Any]:
        return {"origin": "a", "seq": seq, "kind": kind, "time": t,
                "body": {"token": token, "target": target, "mode": mode, "holder": holder, **more}}

    good = [ev(1, "lock.granted", 1.0, 1, "/d", "write", "x"),
            ev(2, "lock.expired", 5.0, 1, "/d", "write", "x"),
            ev(3, "lock.granted", 8.0, 2, "/d/f", "read", "y"),
            ev(4, "lock.granted", 8.5, 3, "/d/f", "read", "z"),
            ev(5, "lock.released", 9.0, 2, "/d/f", "read", "y", reason="released")]
    homes = {"a": replay("a", good)}
    assert not homes["a"].violations
    bad = replay("a", [*good, ev(6, "lock.granted", 9.5, 3, "/d", "write", "w")])
    assert len(bad.violations) == 2   # token not increasing, and WRITE /d over z's READ /d/f

    def w(n: int, token: int, mode: str, holder: str, t: float, path: str = "/d/f") -> Attempt:
        return Attempt(n, "a", path, token, mode, holder, True, 0, t, t, t, t)

    assert not stale_writes([w(0, 1, "write", "x", 2.0), w(1, 2, "read", "y", 8.2),
                             w(2, 3, "read", "z", 8.6)], homes)
    late = stale_writes([w(0, 1, "write", "x", 6.0)], homes)          # after its expiry
    assert len(late) == 1 and "after it ended" in late[0]
    order = stale_writes([w(0, 2, "read", "y", 8.2), w(1, 1, "write", "x", 4.0)], homes)
    assert len(order) == 1 and order[0].startswith("stale write #1")
    assert stale_writes([w(0, 1, "write", "y", 2.0)], homes)          # someone else's token


# -- L2 ------------------------------------------------------------------------------------
def test_l2_paused_holder_regranted_after_ttl_plus_lock_delay_and_fenced(lab: Lab) -> None:
    """A `mesh lock run` holder on b (lock homed on a) is SIGSTOPped, with its command, for
    2×TTL.  A waiter on c is granted no earlier than last renewal + TTL + lock-delay (±1 s,
    on the kernel's monotonic clock), the stale holder's writes after the expiry are all
    refused by the store and by `mesh lock check`, and `run` stops its command and exits 3."""
    ttl, delay = 6.0, 4.0
    start_mesh(lab, locks_env(ttl, delay, 1))
    a, b, c = lab["a"], lab["b"], lab["c"]
    target, path = "a:/srv/l2", "/srv/l2"
    with FencedStore(lab, "l2") as store:
        out = open(lab.dir / "l2-run.log", "w")  # noqa: SIM115 - the child writes it
        run = b.popen(mesh_argv(lab, "lock", "run", target, "--as", "l2-holder", "--", lab.python,
                                "-c", WRITER, str(store.path), "a", path, "0", "0.2"),
                      stdout=out, stderr=subprocess.STDOUT)
        first = until(lambda: [x for x in store.by("l2-holder") if x.accepted], 30,
                      "the holder's first fenced write")[0]
        old = first.token
        waited: dict[str, Any] = {}

        def wait_on_c() -> None:
            r = c.mesh("lock", "acquire", target, "--wait", "60", "--as", "l2-waiter", "--json",
                       timeout=120)
            waited.update(t=time.monotonic(), rc=r.returncode, out=r.stdout, err=r.stderr)

        waiter = threading.Thread(target=wait_on_c)
        waiter.start()
        until(lambda: [w for w in lock_list(a)["waiters"] if w["holder"] == "l2-waiter"], 20,
              "the waiter from c queued on a")
        time.sleep(ttl / 2)                       # at least one renewal through the link
        writer = children(run.pid)
        assert writer, f"`mesh lock run` has no command running ({run.poll()}):\n" + (
            lab.dir / "l2-run.log").read_text()
        paused = [run.pid, *writer]
        signal_all(paused, signal.SIGSTOP)
        t_stop = time.monotonic()
        try:
            time.sleep(1.0)                       # a renewal already on the wire lands
            q0 = time.monotonic()
            grants = {g["token"]: g for g in lock_list(a)["grants"]}
            q1 = time.monotonic()
            assert old in grants, f"the paused holder's grant is gone already: {grants}"
            left = float(grants[old]["expires_in"])
            exp_lo, exp_hi = q0 + left, q1 + left   # last renewal + TTL, on this clock
            time.sleep(max(0.0, t_stop + 2 * ttl - time.monotonic()))
            waiter.join(timeout=10)
        finally:
            signal_all(writer, signal.SIGCONT)    # the command first: it tries a stale write
        t_cont = time.monotonic()
        with contextlib.suppress(AssertionError):
            until(lambda: [x for x in store.by("l2-holder") if x.t0 >= t_cont], 5,
                  "a write attempt of the resumed holder")
        signal_all([run.pid], signal.SIGCONT)
        rc = run.wait(timeout=30)
        out.close()
        run_log = (lab.dir / "l2-run.log").read_text()
        assert not waiter.is_alive(), "the waiter on c was not granted within 2×TTL"
        assert waited["rc"] == 0, waited
        new = json.loads(waited["out"])["token"]
        t_granted = waited["t"]
        # Re-granted no earlier than last renewal + TTL + lock-delay, and not much later.
        earliest, latest = exp_lo + delay, exp_hi + delay
        assert t_granted >= earliest - 1.0, (
            f"re-granted {earliest - t_granted:.2f} s before last renewal + TTL + lock-delay")
        assert t_granted <= latest + 1.0, (
            f"re-granted {t_granted - latest:.2f} s after last renewal + TTL + lock-delay")
        renewed = exp_hi - ttl
        assert t_stop - ttl / 3 - 2.0 <= renewed <= t_stop + 1.0, (renewed - t_stop, ttl)
        assert new > old
        # The stale holder's writes: accepted only before its lease ran out, refused after.
        mine = store.by("l2-holder", old)
        late = [x for x in mine if x.t0 >= exp_hi]
        assert late, "the resumed holder made no write attempt"
        assert not [x for x in late if x.accepted], [x for x in late if x.accepted]
        assert all(x.t0 < exp_hi for x in mine if x.accepted)
        assert rc == 3, f"`mesh lock run` exited {rc}, not 3:\n{run_log}"
        assert "lost the lock" in run_log, run_log
        # `mesh lock check` with the old token, from the holder's host: exit 3; the new one: 0.
        chk = b.mesh("lock", "check", target, "--token", str(old))
        assert chk.returncode == 3, (chk.returncode, chk.stdout, chk.stderr)
        assert b.mesh("lock", "check", target, "--token", str(new)).returncode == 0
        assert store.write("a", path, new, "write", "l2-waiter").accepted
        assert not store.write("a", path, old, "write", "l2-holder").accepted
    # The grantor's own record agrees: expired, then granted lock-delay later.
    events = lock_events(a)
    h = replay("a", events)
    assert not h.violations, h.violations
    exp_ev = next(e for e in events if e["kind"] == "lock.expired" and e["body"]["token"] == old)
    got_ev = next(e for e in events if e["kind"] == "lock.granted" and e["body"]["token"] == new)
    gap = got_ev["time"] - exp_ev["time"]
    assert delay - 0.5 <= gap <= delay + 1.0, f"journal: granted {gap:.3f} s after the expiry"
    print(f"\nL2: stop at 0; last renewal {renewed - t_stop:+.2f} s; expiry {exp_hi - t_stop:+.2f} s; "
          f"re-grant seen on c {t_granted - t_stop:+.2f} s (bound {latest - t_stop:+.2f} s); "
          f"journal expiry->grant {gap:.3f} s; stale attempts {len(late)}, accepted 0")


# -- L6 ------------------------------------------------------------------------------------
L6_TTL, L6_DELAY, L6_GRACE = 10.0, 3.0, 2.0


@dataclass
class LostReply:
    rid: str
    token: int
    r0: float          # the release on a that granted to b's waiter: started ...
    r1: float          # ... and answered (the grant lies in between)
    rc: int            # b's `mesh lock acquire --wait`
    err: str
    t_fail: float


def reply_lost(lab: Lab, target: str, holder: str) -> LostReply:
    """b waits for ``target`` (homed on a, held there by l6-a); a|b is partitioned and a
    releases, which grants to b's waiter while b cannot hear the answer."""
    a, b = lab["a"], lab["b"]
    rid = uuid.uuid4().hex
    assert a.mesh("lock", "acquire", target, "--as", "l6-a").returncode == 0
    proc = b.popen(mesh_argv(lab, "lock", "acquire", target, "--wait", "60", "--ttl", f"{L6_TTL:g}",
                             "--as", holder, "--request-id", rid, "--json"),
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    until(lambda: [w for w in lock_list(a)["waiters"] if w["request_id"] == rid], 20,
          "b's request queued on a")
    lab.partition(a, b)
    time.sleep(0.3)
    r0 = time.monotonic()
    rel = a.mesh("lock", "release", target, "--as", "l6-a")
    r1 = time.monotonic()
    assert rel.returncode == 0, rel.stderr
    mine = [g for g in lock_list(a)["grants"] if g["request_id"] == rid]
    assert mine and mine[0]["holder"] == holder, f"a did not grant to b's waiter: {mine}"
    _, err = proc.communicate(timeout=120)
    return LostReply(rid, int(mine[0]["token"]), r0, r1, proc.returncode, err, time.monotonic())


def test_l6_reply_lost_then_retry_with_the_same_request_id_returns_the_grant(lab: Lab) -> None:
    """b's `--wait` is granted on a while a|b is partitioned.  b's CLI must not claim a
    refusal: it exits 4 (home unreachable, outcome unknown) and its hint names the request
    id; after the heal a retry with that id returns the same grant (`how: retry`)."""
    start_mesh(lab, locks_env(L6_TTL, L6_DELAY, L6_GRACE))
    a, b = lab["a"], lab["b"]
    target = "a:/srv/l6-retry"
    lost = reply_lost(lab, target, "l6-b")
    # The answer is lost: b cannot know whether it was granted, so it must not say "refused".
    assert lost.rc == 4, (lost.rc, lost.err)
    assert "unreachable" in lost.err and lost.rid in lost.err, lost.err  # the hint names the id
    lab.heal()
    until(lambda: links_up(b), 30, "b relinked with a")
    r = b.mesh("lock", "acquire", target, "--ttl", f"{L6_TTL:g}", "--as", "l6-b",
               "--request-id", lost.rid, "--json")
    t_retry = time.monotonic()
    assert r.returncode == 0, (r.returncode, r.stderr)
    g = json.loads(r.stdout)
    assert (g["how"], g["token"], g["holder"]) == ("retry", lost.token, "l6-b"), g
    assert t_retry < lost.r0 + L6_TTL, "the retry came after the lease; the test proves nothing"
    assert b.mesh("lock", "check", target, "--token", str(lost.token)).returncode == 0
    assert b.mesh("lock", "release", target, "--as", "l6-b", "--token", str(lost.token)).returncode == 0
    h = replay("a", lock_events(a))
    assert not h.violations, h.violations
    print(f"\nL6 retry: b's CLI exit {lost.rc} {lost.t_fail - lost.r1:.1f} s after the grant "
          f"({lost.err.strip().splitlines()[0]}); retry {t_retry - lost.r1:.1f} s after the grant "
          f"returned token {g['token']} (how: {g['how']})")


def test_l6_reply_lost_without_retry_is_freed_within_ttl_plus_lock_delay(lab: Lab) -> None:
    """The same lost answer, never retried, for a holder nobody renews (an `--as` name): the
    orphan grant runs out and its lock-delay ends TTL + lock-delay after the grant (±1 s);
    a waiter on a gets it then, not before."""
    start_mesh(lab, locks_env(L6_TTL, L6_DELAY, L6_GRACE))
    a = lab["a"]
    target = "a:/srv/l6-orphan"
    lost = reply_lost(lab, target, "l6-b")
    assert lost.rc == 4, (lost.rc, lost.err)
    lab.heal()                  # healed: the worst case, nothing else will end it
    r = a.mesh("lock", "acquire", target, "--wait", "60", "--as", "l6-late", "--json", timeout=90)
    t_free = time.monotonic()
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["token"] > lost.token
    lo, hi = lost.r0 + L6_TTL + L6_DELAY, lost.r1 + L6_TTL + L6_DELAY
    assert lo - 1.0 <= t_free <= hi + 1.0, (
        f"freed {t_free - lost.r1:.2f} s after the grant; bound TTL + lock-delay = "
        f"{L6_TTL + L6_DELAY:g} s ±1")
    h = replay("a", lock_events(a))
    assert not h.violations, h.violations
    assert h.lives[lost.token].how == "expired"
    print(f"\nL6 no retry: orphan grant freed {t_free - lost.r1:.2f} s after it was made "
          f"(TTL + lock-delay = {L6_TTL + L6_DELAY:g} s)")


def pane_holder(lab: Lab) -> str:
    """A shell pane on b, known on a: an agent holder whose liveness a can see."""
    a, b = lab["a"], lab["b"]
    b.new_window("agent", "bash --norc")
    b.mesh("resync")
    until(lambda: "b-main-agent" in {x["address"] for x in a.agents()}, 20, "b's agent listed on a")
    return "b-main-agent"


def test_l6_reply_lost_to_an_agent_cut_off_is_freed_after_grace_ttl_and_lock_delay(lab: Lab) -> None:
    """The holder is an agent pane on b, and the partition stays.  a renews an agent's lock
    while b is linked, then for grace_s (docs/locks.md, Leases), so the orphan ends at: link
    declared dead + grace + TTL + lock-delay -- longer than RELIABILITY L6's TTL + lock-delay
    by the detection time and the grace."""
    start_mesh(lab, locks_env(L6_TTL, L6_DELAY, L6_GRACE))
    a = lab["a"]
    target = "a:/srv/l6-pane"
    lost = reply_lost(lab, target, pane_holder(lab))
    assert lost.rc == 4, (lost.rc, lost.err)
    assert "--request-id" in lost.err, lost.err  # the hint says how to find out
    r = a.mesh("lock", "acquire", target, "--wait", "60", "--as", "l6-late", "--json", timeout=90)
    t_free = time.monotonic()
    assert r.returncode == 0, r.stderr
    dead_after = float(LINKS["MESHD_LINKS_DEAD_AFTER_S"])
    bound = L6_TTL + L6_DELAY + L6_GRACE + dead_after + 1.0   # + one ticker period
    took = t_free - lost.r1
    assert L6_TTL + L6_DELAY - 1.0 <= took <= bound + 1.0, (took, bound)
    h = replay("a", lock_events(a))
    assert not h.violations, h.violations
    print(f"\nL6 agent holder, partition kept: freed {took:.2f} s after the grant "
          f"(TTL + lock-delay = {L6_TTL + L6_DELAY:g} s; + grace + link-dead detection <= {bound:g} s)")


def test_l6_reply_lost_to_a_live_agent_stays_its_grant_after_the_heal(lab: Lab) -> None:
    """The holder is an agent pane on b and the partition heals: a renews the lock while the
    pane lives, so it is not freed after TTL + lock-delay; it is the requester's, and its
    retry with the request id from the error's hint returns that same grant."""
    start_mesh(lab, locks_env(L6_TTL, L6_DELAY, L6_GRACE))
    a, b = lab["a"], lab["b"]
    target = "a:/srv/l6-live"
    holder = pane_holder(lab)
    lost = reply_lost(lab, target, holder)
    assert lost.rc == 4 and lost.rid in lost.err, (lost.rc, lost.err)
    lab.heal()
    until(lambda: links_up(b), 30, "b relinked with a")
    time.sleep(max(0.0, lost.r1 + L6_TTL + L6_DELAY + L6_GRACE + 1.0 - time.monotonic()))
    grants = [g for g in lock_list(a)["grants"] if g["token"] == lost.token]
    assert grants and grants[0]["holder"] == holder, f"the live agent's grant was not kept: {grants}"
    r = b.mesh("lock", "acquire", target, "--ttl", f"{L6_TTL:g}", "--as", holder,
               "--request-id", lost.rid, "--json")
    assert r.returncode == 0, r.stderr
    g = json.loads(r.stdout)
    assert (g["how"], g["token"]) == ("retry", lost.token), g
    assert b.mesh("lock", "release", target, "--as", holder).returncode == 0
    print(f"\nL6 agent holder, healed: still held {time.monotonic() - lost.r1:.1f} s after the "
          "grant (renewed while its pane lives); the retry returned it")


# -- L1 ------------------------------------------------------------------------------------
L1_TTL, L1_DELAY, L1_GRACE = 6.0, 3.0, 1.0
L1_FILES = ["/srv/d0/f0", "/srv/d0/f1", "/srv/d0/f2", "/srv/d1/f0", "/srv/d1/f1", "/srv/g"]
L1_TARGETS = ["/srv/d0", *L1_FILES]          # 7 per home, 21 in all; /srv/d0 covers three
L1_MODES = (["write"] * 7 + ["co_write"] * 5 + ["read"] * 5 + ["intent"] * 3)
L1_HOLDERS = ["a", "a", "a", "b", "b", "b", "c", "c"]


@dataclass
class Nemesis:
    lab: Lab
    env: dict[str, str]
    seconds: float
    procs: dict[str, subprocess.Popen[Any]]
    rng: random.Random
    log: list[str] = field(default_factory=list)
    paused: set[int] = field(default_factory=set)
    mu: threading.Lock = field(default_factory=threading.Lock)

    def note(self, what: str) -> None:
        self.log.append(f"{time.monotonic():.1f} {what}")

    def run(self) -> None:
        t_end = time.monotonic() + self.seconds
        kill_at = time.monotonic() + self.seconds * self.rng.uniform(0.3, 0.6)
        names = [h.name for h in self.lab]
        while time.monotonic() < t_end:
            time.sleep(self.rng.uniform(2.0, 5.0))
            if time.monotonic() >= kill_at:
                kill_at = float("inf")
                self.kill_restart(self.rng.choice(names))
                continue
            what = self.rng.choice(["partition", "isolate", "heal", "heal", "pause", "pause", "pause"])
            if what == "partition":
                x, y = self.rng.sample(names, 2)
                self.lab.partition(x, y)
                self.note(f"partition {x}|{y}")
            elif what == "isolate":
                x = self.rng.choice(names)
                self.lab.isolate(x)
                self.note(f"isolate {x}")
            elif what == "heal":
                self.lab.heal()
                self.note("heal")
            else:
                self.pause()
        self.lab.heal()
        self.note("heal (end)")

    def pause(self) -> None:
        live = [(n, p) for n, p in list(self.procs.items()) if p.poll() is None]
        if not live:
            return
        name, p = self.rng.choice(live)
        pids = [p.pid] if self.rng.random() < 0.4 else [p.pid, *children(p.pid)]
        secs = self.rng.uniform(0.5, 2 * L1_TTL)
        with self.mu:
            self.paused.update(pids)
        signal_all(pids, signal.SIGSTOP)
        self.note(f"SIGSTOP {name} {'run' if len(pids) == 1 else 'run+command'} for {secs:.1f} s")
        threading.Timer(secs, self.resume, args=(pids,)).start()

    def resume(self, pids: list[int]) -> None:
        signal_all(pids, signal.SIGCONT)
        with self.mu:
            self.paused.difference_update(pids)

    def resume_all(self) -> None:
        with self.mu:
            pids = list(self.paused)
        self.resume(pids)

    def kill_restart(self, name: str) -> None:
        h = self.lab[name]
        with contextlib.suppress(Exception):
            h.kill_meshd(signal.SIGKILL)
        self.note(f"SIGKILL meshd {name}")
        time.sleep(self.rng.uniform(1.0, 3.0))
        up(h, self.env)
        self.note(f"restarted meshd {name}")


def l1_holder(lab: Lab, host: Host, name: str, sock: Path, stop: threading.Event,
              procs: dict[str, subprocess.Popen[Any]], exits: dict[int, int], seed: int) -> None:
    """One agent: `mesh lock run HOME:target` on its host, over and over, each run doing a few
    fenced writes (reads for READ and INTENT) through the store."""
    rng = random.Random(seed)
    with open(lab.dir / f"l1-{name}.log", "w") as err:
        while not stop.is_set():
            home, target, mode = rng.choice("abc"), rng.choice(L1_TARGETS), rng.choice(L1_MODES)
            files = [f for f in L1_FILES if covers(key_of(target), key_of(f))]
            argv = mesh_argv(lab, "lock", "run", f"{home}:{target}", "--mode", mode,
                             "--wait", f"{rng.uniform(0.5, 6):.1f}", "--as", name, "--",
                             lab.python, "-c", WRITER, str(sock), home, ",".join(files),
                             str(rng.randint(3, 10)), f"{rng.uniform(0.1, 0.6):.2f}")
            p = host.popen(argv, stdout=subprocess.DEVNULL, stderr=err)
            procs[name] = p
            try:
                rc = p.wait(timeout=180)
            except subprocess.TimeoutExpired:
                p.kill()
                rc = -999
            exits[rc] = exits.get(rc, 0) + 1
            time.sleep(rng.uniform(0.0, 0.3))


def test_l1_nemesis_no_stale_write_accepted_no_overlapping_grants(lab: Lab) -> None:
    """8 holders on 3 hosts compete for 21 targets spread over the 3 homes with random modes,
    while a nemesis partitions and heals links, pauses holders (SIGSTOP up to 2×TTL, `run`
    alone or with its command) and SIGKILLs and restarts one meshd.  Afterwards: no write
    accepted with a stale token, tokens strictly increasing per home in grant order, no
    overlapping incompatible grants in any grantor's history."""
    seconds = float(os.environ.get("MESHD_L1_S", "60"))
    seed = int(os.environ.get("MESHD_L1_SEED", str(random.randrange(1 << 30))))
    env = locks_env(L1_TTL, L1_DELAY, L1_GRACE)
    start_mesh(lab, env)
    procs: dict[str, subprocess.Popen[Any]] = {}
    exits: dict[int, int] = {}
    stop = threading.Event()
    with FencedStore(lab, "l1") as store:
        nem = Nemesis(lab, env, seconds, procs, random.Random(seed))
        holders = [threading.Thread(target=l1_holder, daemon=True,
                                    args=(lab, lab[h], f"{h}.h{i}", store.path, stop, procs, exits,
                                          seed + i))
                   for i, h in enumerate(L1_HOLDERS)]
        for t in holders:
            t.start()
        try:
            nem.run()
        finally:
            stop.set()
            lab.heal()
            nem.resume_all()
        for t in holders:
            t.join(timeout=120)
        nem.resume_all()
        assert not [t for t in holders if t.is_alive()], "holders did not finish"
        for h in lab:
            if h.meshd_pid() is None:
                up(h, env)
        writes = list(store.log)
    homes = {h.name: replay(h.name, lock_events(h)) for h in lab}
    violations = [v for h in homes.values() for v in h.violations] + stale_writes(writes, homes)
    grants = {n: len(h.lives) for n, h in homes.items()}
    accepted = sum(a.accepted for a in writes)
    fenced = sum(1 for a in writes if not a.accepted and (life := homes[a.home].lives.get(a.token))
                 and life.end is not None and life.end < a.w0)
    summary = (f"L1 seed {seed}, {seconds:g} s: {len(nem.log)} faults; runs by exit status "
               f"{dict(sorted(exits.items()))}; grants per home {grants}; writes accepted "
               f"{accepted}, refused {len(writes) - accepted} ({fenced} with a token that had ended); "
               f"violations {len(violations)}")
    print("\n" + summary + "\n  " + "\n  ".join(nem.log))
    assert not violations, summary + "\n" + "\n".join(violations[:30]) + "\nfaults:\n" + "\n".join(nem.log)
    assert len(nem.log) >= seconds / 6, nem.log
    assert accepted >= seconds / 2 and min(grants.values()) >= 5, summary  # the run did something
