"""Locks: the pure table against a brute-force reference model (L7), leases on a fake clock,
fencing, L5 rejections, L6 retries, deadlocks (L8, the pure part), the service, the daemon
ops and the CLI.

Scale the property tests with MESHD_LOCK_EXAMPLES (default sized for CI; RELIABILITY L7
asks for 10,000 sequences: ``MESHD_LOCK_EXAMPLES=10000``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshd.daemon import locks_api
from meshd.errors import EXIT_REFUSED, EXIT_TRANSPORT, Refused, StateError, TransportError, from_dict
from meshd.locks import deadlock as dl
from meshd.locks.modes import Mode
from meshd.locks.service import Liveness, LockService
from meshd.locks.store import check_pragmas
from meshd.locks.table import (
    Cancelled,
    Conflict,
    Deadlock,
    Granted,
    GrantStarted,
    How,
    LockTable,
    Phase,
    Queued,
    Rejected,
    Released,
    Renewed,
    WaitEnded,
    key_of,
    normalize,
    overlaps,
)
from meshd.paths import StatePaths

EXAMPLES = int(os.environ.get("MESHD_LOCK_EXAMPLES", "300"))
R, W, IN, C = Mode.READ, Mode.WRITE, Mode.INTENT, Mode.CO_WRITE

# The documented matrix (docs/locks.md), typed out again on purpose: held -> wanted -> ok.
MATRIX = {
    R: {R: True, W: False, IN: True, C: False},
    W: {R: False, W: False, IN: False, C: False},
    IN: {R: True, W: False, IN: False, C: False},
    C: {R: False, W: False, IN: False, C: True},
}
COVERED = {R: {R}, W: {R, W, IN, C}, IN: {IN, R}, C: {C}}   # asking again for these = held
UPGRADES = {(IN, W), (R, W)}


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# ==========================================================================================
# Reference model: lists and brute force, no indexes, no incremental state.
# ==========================================================================================
def parts(target: str) -> list[str]:
    return [target] if target.startswith("@") else ["/", *[p for p in target.split("/") if p]]


def over(a: str, b: str) -> bool:
    pa, pb = parts(a), parts(b)
    short, long_ = (pa, pb) if len(pa) <= len(pb) else (pb, pa)
    return long_[:len(short)] == short


class Model:
    def __init__(self, delay: float) -> None:
        self.delay, self.fence, self.now = delay, 0, 0.0
        self.grants: list[dict[str, Any]] = []
        self.queue: list[dict[str, Any]] = []
        self.delays: list[dict[str, Any]] = []

    # -- analysis (exponential in the queue length; the queue holds at most one per holder)
    def hard(self, w: dict[str, Any]) -> list[dict[str, Any]]:
        return [g for g in self.grants if g["holder"] != w["holder"] and over(g["target"], w["target"])
                and not MATRIX[g["mode"]][w["mode"]]]

    def delayed(self, w: dict[str, Any]) -> list[dict[str, Any]]:
        return [d for d in self.delays if d["holder"] != w["holder"] and d["until"] > self.now
                and over(d["target"], w["target"]) and not MATRIX[d["mode"]][w["mode"]]]

    def edges(self, queue: list[dict[str, Any]]) -> set[tuple[str, str]]:
        out = set()
        for i, e in enumerate(queue):
            out |= {(e["holder"], h) for h in self.blockers(e, queue[:i])}
        return out

    def ahead(self, w: dict[str, Any], earlier: list[dict[str, Any]]) -> list[dict[str, Any]]:
        edges = self.edges(earlier)
        deps = {w["holder"]}
        while True:   # fixpoint: everyone who waits, through anyone, for w's holder
            more = {a for a, b in edges if b in deps} - deps
            if not more:
                break
            deps |= more
        return [e for e in earlier if e["holder"] not in deps and over(e["target"], w["target"])]

    def blockers(self, w: dict[str, Any], earlier: list[dict[str, Any]]) -> set[str]:
        return {g["holder"] for g in self.hard(w)} | {e["holder"] for e in self.ahead(w, earlier)}

    def free(self, w: dict[str, Any], earlier: list[dict[str, Any]]) -> bool:
        return not (self.hard(w) or self.delayed(w) or self.ahead(w, earlier))

    # -- transitions
    def issue(self, w: dict[str, Any]) -> int:
        if w["up"] is not None:
            self.grants = [g for g in self.grants if g["token"] != w["up"]]
        self.fence += 1
        self.grants.append(dict(token=self.fence, target=w["target"], mode=w["mode"],
                                holder=w["holder"], ttl=w["ttl"], exp=self.now + w["ttl"],
                                rid=w["rid"]))
        return self.fence

    def pump(self) -> None:
        earlier: list[dict[str, Any]] = []
        for w in list(self.queue):
            if self.free(w, earlier):
                self.queue.remove(w)
                self.issue(w)
            else:
                earlier.append(w)

    def end(self, g: dict[str, Any], expired: bool) -> None:
        self.grants.remove(g)
        if expired and g["exp"] + self.delay > self.now:
            self.delays.append(dict(token=g["token"], target=g["target"], mode=g["mode"],
                                    holder=g["holder"], until=g["exp"] + self.delay))
        self.queue = [w for w in self.queue if w["up"] != g["token"]]

    def sweep(self, now: float) -> None:
        self.now = now
        for g in [g for g in self.grants if now >= g["exp"]]:
            self.end(g, expired=True)
        self.delays = [d for d in self.delays if now < d["until"]]
        self.pump()
        late = [w for w in self.queue if w["deadline"] is not None and now >= w["deadline"]]
        self.queue = [w for w in self.queue if w not in late]
        if late:
            self.pump()

    def find(self, target: str, holder: str, token: int | None) -> dict[str, Any] | None:
        for g in self.grants:
            if token is None and g["holder"] == holder and parts(g["target"]) == parts(target):
                return g
            if token is not None and g["token"] == token:
                return g if g["holder"] == holder and parts(g["target"]) == parts(target) else None
        return None

    # -- operations, answering in the normalised form of ``outcome``
    def acquire(self, target: str, mode: Mode, holder: str, ttl: float, rid: str, now: float,
                wait: bool, wait_until: float | None) -> tuple[Any, ...]:
        self.sweep(now)
        for g in self.grants:
            if g["rid"] == rid:
                same = (g["target"], g["mode"], g["holder"]) == (target, mode, holder)
                return ("granted", g["token"], "retry") if same else ("rejected",)
        for i, w in enumerate(self.queue):
            if w["rid"] == rid:
                if (w["target"], w["mode"], w["holder"]) != (target, mode, holder):
                    return ("rejected",)
                ahead = self.ahead(w, self.queue[:i])
                return ("queued", len(ahead) + 1, tuple(sorted(self.blockers(w, self.queue[:i]))))
        up = None
        own = self.find(target, holder, None)
        if own is not None:
            if mode in COVERED[own["mode"]]:
                return ("granted", own["token"], "held")
            if (own["mode"], mode) not in UPGRADES:
                return ("rejected",)
            up = own["token"]
        if any(w["holder"] == holder for w in self.queue):
            return ("rejected",)
        w = dict(rid=rid, target=target, mode=mode, holder=holder, ttl=ttl, up=up,
                 deadline=wait_until if wait else None)
        if self.free(w, self.queue):
            return ("granted", self.issue(w), "new")
        blockers = self.blockers(w, self.queue)
        if not wait or (wait_until is not None and wait_until <= now):
            retry = max((d["until"] for d in self.delayed(w)), default=None)
            return ("conflict", tuple(sorted({g["holder"] for g in self.hard(w)})),
                    tuple(sorted({e["holder"] for e in self.ahead(w, self.queue)})), retry)
        edges = self.edges(self.queue) | {(holder, b) for b in blockers}
        reach, todo = set(), list(blockers)
        while todo:
            x = todo.pop()
            if x == holder:
                return ("deadlock",)
            if x not in reach:
                reach.add(x)
                todo += [b for a, b in edges if a == x]
        self.queue.append(w)
        return ("queued", len(self.ahead(w, self.queue[:-1])) + 1, tuple(sorted(blockers)))

    def release(self, target: str, holder: str, token: int | None, now: float) -> tuple[Any, ...]:
        self.sweep(now)
        g = self.find(target, holder, token)
        if g is None:
            return ("rejected",)
        self.end(g, expired=False)
        self.pump()
        return ("released", g["token"])

    def renew(self, target: str, holder: str, token: int | None, now: float) -> tuple[Any, ...]:
        self.sweep(now)
        g = self.find(target, holder, token)
        if g is None:
            return ("rejected",)
        g["exp"] = now + g["ttl"]
        return ("renewed", g["token"], g["exp"])

    def gone(self, holder: str, now: float) -> tuple[Any, ...]:
        self.sweep(now)
        self.queue = [w for w in self.queue if w["holder"] != holder]
        self.grants = [g for g in self.grants if g["holder"] != holder]
        self.pump()
        return ("gone",)

    def cancel(self, rid: str, now: float) -> tuple[Any, ...]:
        self.sweep(now)
        if any(w["rid"] == rid for w in self.queue):
            self.queue = [w for w in self.queue if w["rid"] != rid]
            self.pump()
            return ("cancelled", None)
        return ("cancelled", next((g["token"] for g in self.grants if g["rid"] == rid), None))

    def check(self, target: str, token: int, now: float) -> tuple[Any, ...]:
        g = next((g for g in self.grants if g["token"] == token), None)
        ok = (g is not None and now < g["exp"]
              and parts(target)[:len(parts(g["target"]))] == parts(g["target"]))
        return ("check", ok)

    def state(self) -> tuple[Any, ...]:
        return (sorted((g["token"], g["target"], str(g["mode"]), g["holder"], g["exp"]) for g in self.grants),
                [w["rid"] for w in self.queue],
                sorted((d["token"], d["until"]) for d in self.delays), self.fence)


def outcome(res: Any) -> tuple[Any, ...]:
    if isinstance(res, Granted):
        return ("granted", res.token, str(res.how))
    if isinstance(res, Queued):
        return ("queued", res.position, res.blockers)
    if isinstance(res, Conflict):
        return ("conflict", res.holders, res.waiting, res.retry_at)
    if isinstance(res, Deadlock):
        return ("deadlock",)
    if isinstance(res, Rejected):
        return ("rejected",)
    if isinstance(res, Released):
        return ("released", res.grant.token)
    if isinstance(res, Renewed):
        return ("renewed", res.grant.token, res.grant.expires_at)
    if isinstance(res, Cancelled):
        return ("cancelled", res.granted.token if res.granted else None)
    raise AssertionError(res)


def table_state(t: LockTable) -> tuple[Any, ...]:
    return (sorted((g.token, g.target, str(g.mode), g.holder, g.expires_at) for g in t.grants()),
            [w.request_id for w in t.waiters()], sorted((d.token, d.until) for d in t.delays()),
            t.fence)


def assert_invariants(t: LockTable, now: float, started: list[GrantStarted], last_token: int) -> int:
    grants = t.grants()
    for a, b in itertools.combinations(grants, 2):
        if a.holder != b.holder and overlaps(a.key, b.key):
            assert MATRIX[a.mode][b.mode], f"incompatible grants at once: {a} and {b}"
    for e in started:          # fencing: strictly increasing, never reused
        assert e.grant.token > last_token
        last_token = e.grant.token
        for d in t.delays():   # lock-delay honoured by every new grant
            assert not (d.holder != e.grant.holder and overlaps(d.key, e.grant.key)
                        and not MATRIX[d.mode][e.grant.mode] and d.until > now), (d, e)
    for w, blocked in t.blocked():
        assert not blocked.free, f"waiter {w} could be granted but waits"
    assert dl.find_any_cycle(t.wait_edges()) is None
    assert len({w.holder for w in t.waiters()}) == len(t.waiters())
    return last_token


# -- the model test -------------------------------------------------------------------------
HOLDERS = ["A", "B", "C", "D"]
TARGETS = ["/r", "/r/a", "/r/a/x", "/r/b", "/ra", "@n", "@m"]
DTS = [0, 0, 0, 0, 0, 0, 0.5, 1, 2.5, 5, 10, 15]

OPS = {
    "acq": st.tuples(st.just("acq"), st.sampled_from(DTS), st.sampled_from(HOLDERS),
                     st.sampled_from(TARGETS), st.sampled_from(list(Mode)),
                     st.sampled_from([5.0, 10.0, 15.0]), st.booleans(),
                     st.sampled_from([None, 2.5, 5.0, 20.0]),
                     st.integers(-12, 3)),                          # < 0: a new request id
    "rel": st.tuples(st.just("rel"), st.sampled_from(DTS), st.sampled_from(HOLDERS),
                     st.sampled_from(TARGETS), st.sampled_from(["none", "own", "own", 1, 3, 99])),
    "renew": st.tuples(st.just("renew"), st.sampled_from(DTS), st.sampled_from(HOLDERS),
                       st.sampled_from(TARGETS), st.sampled_from(["none", "own", "own", 2, 99])),
    "drop": st.tuples(st.just("drop"), st.sampled_from(DTS), st.integers(0, 20)),   # a held lock
    "gone": st.tuples(st.just("gone"), st.sampled_from(DTS), st.sampled_from(HOLDERS)),
    "cancel": st.tuples(st.just("cancel"), st.sampled_from(DTS), st.integers(0, 8)),
    "check": st.tuples(st.just("check"), st.sampled_from(DTS), st.sampled_from(TARGETS),
                       st.integers(0, 12)),
    "tick": st.tuples(st.just("tick"), st.sampled_from(DTS)),
}
WEIGHTS = ["acq"] * 10 + ["rel"] * 2 + ["drop"] * 3 + ["renew", "gone", "cancel", "check", "tick", "tick"]
ops = st.sampled_from(WEIGHTS).flatmap(OPS.__getitem__)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ops, min_size=20, max_size=80), st.sampled_from([0.0, 15.0]))
def test_table_matches_reference_model(seq: list[tuple[Any, ...]], delay: float) -> None:
    """L7: random op sequences; every answer and the whole state equal the model's; safety,
    fencing, lock-delay, FIFO-blockedness and an acyclic wait-for graph hold after every op."""
    t, m = LockTable(lock_delay_s=delay), Model(delay)
    now, last_token, rids = 0.0, 0, ["r0"]
    got: Any
    want: Any
    for op in seq:
        now += op[1]
        if op[0] == "acq":
            _, _, holder, target, mode, ttl, wait, wait_for, reuse = op
            rid = rids[-1 - reuse % len(rids)] if reuse >= 0 else f"r{len(rids)}"
            rids.append(rid)
            until = None if wait_for is None else now + wait_for
            got, eff = t.acquire(target, mode, holder, ttl, rid, now, wait, wait_until=until)
            want = m.acquire(target, mode, holder, ttl, rid, now, wait, until)
        elif op[0] in ("rel", "renew"):
            _, _, holder, target, choice = op
            own = m.find(target, holder, None)
            token = None if choice == "none" else (own["token"] if own else 7) if choice == "own" else choice
            if op[0] == "rel":
                got, eff = t.release(target, holder, token, now)
                want = m.release(target, holder, token, now)
            else:
                got, eff = t.renew(target, holder, token, now)
                want = m.renew(target, holder, token, now)
        elif op[0] == "drop":
            if not m.grants:
                continue
            g = m.grants[op[2] % len(m.grants)]
            got, eff = t.release(g["target"], g["holder"], g["token"], now)
            want = m.release(g["target"], g["holder"], g["token"], now)
        elif op[0] == "gone":
            eff, got = t.holder_gone(op[2], now), None
            want = m.gone(op[2], now)
        elif op[0] == "cancel":
            got, eff = t.cancel(rids[op[2] % len(rids)], now)
            want = m.cancel(rids[op[2] % len(rids)], now)
        elif op[0] == "check":
            got, eff = t.check(op[2], op[3], now), []
            want = m.check(op[2], op[3], now)
        else:
            eff, got, want = t.expire(now), None, None
            m.sweep(now)
        if op[0] == "check":
            assert ("check", got.valid) == want, (op, got)
        elif got is not None:
            assert outcome(got) == want, (op, got, want)
        assert table_state(t) == m.state(), op
        last_token = assert_invariants(t, now, [e for e in eff if isinstance(e, GrantStarted)],
                                       last_token)


# ==========================================================================================
# Targets
# ==========================================================================================
@pytest.mark.parametrize("a,b,expected", [
    ("/a", "/a/b", True), ("/a/b", "/a", True), ("/a", "/ab", False), ("/a/b", "/a/c", False),
    ("/", "/x/y", True), ("@n", "@n", True), ("@n", "@n2", False), ("@n", "/n", False),
    ("@a/b", "@a", False),
])
def test_overlap_is_by_component(a: str, b: str, expected: bool) -> None:
    assert overlaps(key_of(a), key_of(b)) is expected


@pytest.mark.parametrize("raw,norm", [("//a/./b/../c/", "/a/c"), ("/", "/"), ("@x.y-1", "@x.y-1")])
def test_normalize(raw: str, norm: str) -> None:
    assert normalize(raw) == norm


@pytest.mark.parametrize("bad", ["", "rel/path", "@", "@ x", "@-x", "/a\x00b"])
def test_bad_targets_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        normalize(bad)


# ==========================================================================================
# Semantics, leases and lock-delay on a fake clock
# ==========================================================================================
def grant(t: LockTable, target: str, mode: Mode, holder: str, now: float = 0.0, ttl: float = 15.0,
          rid: str | None = None) -> int:
    res, _ = t.acquire(target, mode, holder, ttl, rid or f"{holder}{target}{mode}{now}", now)
    assert isinstance(res, Granted), res
    return res.token


@pytest.mark.parametrize("held,wanted", list(itertools.product(Mode, Mode)))
def test_matrix_enforced_on_same_and_nested_targets(held: Mode, wanted: Mode) -> None:
    for inner in ("/p", "/p/q/r"):
        t = LockTable()
        grant(t, "/p", held, "A")
        res, _ = t.acquire(inner, wanted, "B", 15, "b", 0)
        assert isinstance(res, Granted) == MATRIX[held][wanted], (held, wanted, inner, res)
        own = LockTable()
        grant(own, "/p", held, "A")
        res, _ = own.acquire(inner, wanted, "A", 15, "a2", 0)   # a holder never conflicts with itself
        assert isinstance(res, Granted) or (inner == "/p" and isinstance(res, Rejected)), res


def test_intent_to_write_upgrade_waits_for_readers_and_takes_a_new_token() -> None:
    t = LockTable()
    tok = grant(t, "/p", IN, "A")
    grant(t, "/p/f", R, "B")
    res, _ = t.acquire("/p", W, "A", 15, "up", 1, wait=True)
    assert isinstance(res, Queued) and res.blockers == ("B",)
    t.release("/p/f", "B", None, 2)
    [g] = t.grants()
    assert (g.holder, g.mode) == ("A", W) and g.token > tok
    assert not t.check("/p", tok, 2).valid and t.check("/p/f", g.token, 2).valid


@pytest.mark.parametrize("end", ["release", "expire", "gone"])
def test_an_upgrade_whose_base_lock_ends_stops_waiting(end: str) -> None:
    t = LockTable(lock_delay_s=0)
    grant(t, "/p", R, "A", ttl=10)
    grant(t, "/p", R, "B", ttl=100)
    assert isinstance(t.acquire("/p", W, "A", 15, "up", 1, wait=True)[0], Queued)
    eff = {"release": lambda: t.release("/p", "A", None, 2)[1], "expire": lambda: t.expire(10),
           "gone": lambda: t.holder_gone("A", 2)}[end]()
    assert t.waiters() == [] and [g.holder for g in t.grants()] == ["B"]
    ended = [e for e in eff if isinstance(e, WaitEnded)]
    assert len(ended) == 1 and ended[0].cause == ("gone" if end == "gone" else "lost")
    t.release("/p", "B", None, 20)                     # nothing left to grant, nothing breaks
    assert t.grants() == []


def test_fifo_no_writer_starvation() -> None:
    t = LockTable()
    grant(t, "/p", R, "A")
    assert isinstance(t.acquire("/p", W, "W", 15, "w", 0, wait=True)[0], Queued)
    res, _ = t.acquire("/p/x", R, "B", 15, "b", 0)          # compatible with A, but W came first
    assert isinstance(res, Conflict) and res.waiting == ("W",)
    t.release("/p", "A", None, 1)
    assert [g.holder for g in t.grants()] == ["W"]


def test_a_holder_passes_waiters_that_wait_for_it() -> None:
    t = LockTable()
    grant(t, "/p", W, "A")
    assert isinstance(t.acquire("/p", R, "B", 15, "b", 0, wait=True)[0], Queued)
    res, _ = t.acquire("/p/child", W, "A", 15, "a2", 0, wait=True)   # B waits for A: no deadlock
    assert isinstance(res, Granted)


def test_one_wait_per_holder() -> None:
    t = LockTable()
    grant(t, "/a", W, "A")
    assert isinstance(t.acquire("/a", W, "B", 15, "b1", 0, wait=True)[0], Queued)
    assert isinstance(t.acquire("/c", W, "B", 15, "b2", 0, wait=True)[0], Rejected)


def test_lease_expires_exactly_at_ttl() -> None:
    t = LockTable(lock_delay_s=0)
    tok = grant(t, "/f", W, "A", now=100.0, ttl=15.0)
    assert t.expire(114.999) == [] and t.check("/f", tok, 114.999).valid
    assert not t.check("/f", tok, 115.0).valid
    assert [type(e).__name__ for e in t.expire(115.0)] == ["GrantEnded"] and t.grants() == []


def test_renew_keeps_the_token_and_restarts_the_lease() -> None:
    t = LockTable(lock_delay_s=0)
    tok = grant(t, "/f", W, "A", now=0.0, ttl=15.0)
    res, _ = t.renew("/f", "A", tok, 10.0)
    assert isinstance(res, Renewed) and res.grant.token == tok and res.grant.expires_at == 25.0
    assert t.check("/f", tok, 24.999).valid and not t.check("/f", tok, 25.0).valid


def test_lock_delay_after_expiry_exact() -> None:
    t = LockTable(lock_delay_s=15.0)
    tok = grant(t, "/f", W, "A", now=0.0, ttl=15.0)
    res, _ = t.acquire("/f/x", W, "B", 15, "b", 29.999)
    assert isinstance(res, Conflict) and res.retry_at == 30.0 and res.holders == ()
    assert isinstance(t.acquire("/f", R, "C", 15, "c", 29.999)[0], Conflict)   # READ vs ex-WRITE
    res, _ = t.acquire("/f/x", W, "B", 15, "b2", 30.0)
    assert isinstance(res, Granted) and res.token > tok


def test_lock_delay_spares_the_same_holder_and_compatible_modes() -> None:
    t = LockTable(lock_delay_s=15.0)
    grant(t, "/f", R, "A", now=0.0, ttl=15.0)
    assert isinstance(t.acquire("/f", R, "B", 15, "b", 16.0)[0], Granted)      # READ after READ
    assert isinstance(t.acquire("/f", W, "C", 15, "c", 16.0)[0], Conflict)
    t2 = LockTable(lock_delay_s=15.0)
    grant(t2, "/f", W, "A", now=0.0, ttl=15.0)
    assert isinstance(t2.acquire("/f", W, "A", 15, "a", 16.0)[0], Granted)     # itself


def test_waiter_granted_exactly_when_the_lock_delay_ends() -> None:
    t = LockTable(lock_delay_s=15.0)
    grant(t, "/f", W, "A", now=0.0, ttl=15.0)
    assert isinstance(t.acquire("/f", W, "B", 15, "b", 1.0, wait=True)[0], Queued)
    t.expire(15.0)
    assert t.grants() == [] and len(t.waiters()) == 1
    t.expire(29.999)
    assert t.grants() == []
    started = [e for e in t.expire(30.0) if isinstance(e, GrantStarted)]
    assert [e.grant.holder for e in started] == ["B"] and started[0].waited
    assert t.next_deadline() == 45.0


def test_release_and_death_leave_no_lock_delay() -> None:
    t = LockTable(lock_delay_s=15.0)
    grant(t, "/f", W, "A", now=0.0)
    t.release("/f", "A", None, 1.0)
    assert isinstance(t.acquire("/f", W, "B", 15, "b", 1.0)[0], Granted)
    t.holder_gone("B", 2.0)
    assert isinstance(t.acquire("/f", W, "C", 15, "c", 2.0)[0], Granted)


def test_wait_times_out_at_its_deadline() -> None:
    t = LockTable()
    grant(t, "/f", W, "A", now=0.0, ttl=100)
    assert isinstance(t.acquire("/f", W, "B", 15, "b", 0.0, wait=True, wait_until=5.0)[0], Queued)
    assert t.expire(4.999) == []
    [e] = t.expire(5.0)
    assert type(e).__name__ == "WaitEnded" and t.waiters() == []


def test_clock_must_not_go_backwards() -> None:
    t = LockTable()
    t.expire(10.0)
    with pytest.raises(ValueError):
        t.expire(9.0)


# ==========================================================================================
# Fencing, L5, L6
# ==========================================================================================
@settings(max_examples=min(EXAMPLES, 200), deadline=None)
@given(st.lists(st.tuples(st.sampled_from(HOLDERS), st.sampled_from(TARGETS), st.sampled_from(list(Mode)),
                          st.booleans()), max_size=60))
def test_tokens_strictly_increase_and_are_never_reused(seq: list[tuple[str, str, Mode, bool]]) -> None:
    t, seen, now = LockTable(lock_delay_s=1), [], 0.0
    for i, (holder, target, mode, release) in enumerate(seq):
        now += 1
        _, eff = (t.release(target, holder, None, now) if release
                    else t.acquire(target, mode, holder, 3, f"r{i}", now))
        seen += [e.grant.token for e in eff if isinstance(e, GrantStarted)]
    assert seen == sorted(set(seen)) and (not seen or t.fence == seen[-1])


def test_l5_release_and_renew_rejections() -> None:
    t = LockTable(lock_delay_s=15)
    old = grant(t, "/f", W, "A", now=0.0, ttl=15)
    t.release("/f", "A", old, 1.0)
    tok = grant(t, "/f", W, "A", now=1.0, ttl=15)
    other = grant(t, "/g", W, "B", now=1.0, ttl=15)
    cases = [("/f", "B", tok), ("/f", "B", None),          # not the holder
             ("/f", "A", old), ("/f", "A", 9999),          # old / never-issued token
             ("/f", "A", other), ("/g", "A", tok),         # someone else's token / other target
             ("/f", "A", 0)]
    for target, holder, token in cases:
        for op in (t.release, t.renew):
            before = table_state(t)
            res, _ = op(target, holder, token, 2.0)
            assert isinstance(res, Rejected), (op.__name__, target, holder, token)
            assert table_state(t) == before
    # the expired owner: its lease ran out at 16
    for op in (t.release, t.renew):
        res, _ = op("/f", "A", tok, 16.0)
        assert isinstance(res, Rejected) and "ran out" in res.reason
    assert not t.check("/f", tok, 16.0).valid


def test_l6_retry_with_the_same_request_id_gets_the_same_grant() -> None:
    t = LockTable()
    first, _ = t.acquire("/f", W, "A", 15, "req-1", 0)
    again, eff = t.acquire("/f", W, "A", 15, "req-1", 1)
    assert isinstance(first, Granted) and isinstance(again, Granted)
    assert again.token == first.token and again.how is How.RETRY and eff == []
    assert isinstance(t.acquire("/g", W, "A", 15, "req-1", 1)[0], Rejected)   # same id, other request
    assert isinstance(t.acquire("/f", W, "B", 15, "q", 1, wait=True)[0], Queued)
    assert isinstance(t.acquire("/f", W, "B", 15, "q", 2, wait=True)[0], Queued)


# ==========================================================================================
# Deadlocks (L8, pure part)
# ==========================================================================================
@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_cycle_of_length_n_has_exactly_one_victim(n: int) -> None:
    t = LockTable()
    hs = [f"H{i}" for i in range(n)]
    for i, h in enumerate(hs):
        grant(t, f"/p{i}", W, h)
    for i in range(n - 1):
        assert isinstance(t.acquire(f"/p{i + 1}", W, hs[i], 15, f"w{i}", 1, wait=True)[0], Queued)
    res, _ = t.acquire("/p0", W, hs[-1], 15, "closer", 1, wait=True)
    assert isinstance(res, Deadlock)
    assert res.cycle[0] == hs[-1] and sorted(res.cycle) == sorted(hs)
    assert [w.holder for w in t.waiters()] == hs[:-1]              # the others still wait
    # the victim gives up its lock: the chain unwinds, nobody else is aborted
    t.release(f"/p{n - 1}", hs[-1], None, 2)
    assert {g.holder for g in t.grants()} >= {hs[-2]}


def test_cycle_through_other_homes_is_detected_with_one_victim() -> None:
    """Three homes: A waits for B (home 2), B for C (home 3); here A holds /x and C asks for
    it: C -> A -> B -> C, so C (the requester) is the one victim."""
    t = LockTable()
    grant(t, "/x", W, "A")
    remote = dl.WaitForGraph.of_home("h2", 1, [("A", "B")]).merge(
        dl.WaitForGraph.of_home("h3", 1, [("B", "C")]))
    res, _ = t.acquire("/x", W, "C", 15, "c", 1, wait=True, extra_edges=remote.adjacency())
    assert isinstance(res, Deadlock) and res.cycle == ("C", "A", "B")


def test_edge_released_before_detection_is_no_phantom_cycle() -> None:
    t = LockTable()
    grant(t, "/a", W, "A")
    grant(t, "/b", W, "B")
    assert isinstance(t.acquire("/b", W, "A", 15, "a", 1, wait=True)[0], Queued)
    t.release("/b", "B", None, 2)                                     # A gets /b, stops waiting
    assert isinstance(t.acquire("/a", W, "B", 15, "b", 3, wait=True)[0], Queued)


def closure(adj: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for n in adj.get(todo.pop(), ()):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


NODES = [f"n{i}" for i in range(7)]


@settings(max_examples=EXAMPLES * 3, deadline=None)
@given(st.sets(st.tuples(st.sampled_from(NODES), st.sampled_from(NODES))),
       st.sampled_from(NODES), st.sets(st.sampled_from(NODES), min_size=1))
def test_find_cycle_agrees_with_brute_force_reachability(edges: set[tuple[str, str]], req: str,
                                                        blockers: set[str]) -> None:
    adj = dl.adjacency(edges)
    cycle = dl.find_cycle(adj, req, blockers)
    closes = any(req in closure(adj, b) | ({b} if b == req else set()) for b in blockers - {req})
    assert (cycle is not None) == closes
    if cycle is not None:                         # a real path: req -> c1 -> ... -> ck -> req
        assert cycle[0] == req and cycle[1] in blockers
        for a, b in zip(cycle[1:], [*cycle[2:], req], strict=True):
            assert b in adj.get(a, set())


@settings(max_examples=EXAMPLES * 3, deadline=None)
@given(st.permutations([*HOLDERS, "E", "F"]), st.lists(st.integers(0, 6), min_size=6, max_size=6),
       st.randoms(use_true_random=False))
def test_random_acyclic_wait_patterns_raise_no_deadlock(order: list[str], targets: list[int],
                                                       rnd: random.Random) -> None:
    """Holders wait only on holders later in a random order: never a cycle, never a victim."""
    t = LockTable()
    for h in order:
        grant(t, f"/{h}", W, h)
    reqs = [(i, h) for i, h in enumerate(order) if targets[i] > i and targets[i] < len(order)]
    rnd.shuffle(reqs)
    for i, h in reqs:
        res, _ = t.acquire(f"/{order[targets[i]]}", W, h, 15, f"w{h}", 1, wait=True)
        assert isinstance(res, Queued), res
    assert dl.find_any_cycle(t.wait_edges()) is None


graphs = st.builds(lambda home, v, es: dl.WaitForGraph.of_home(home, v, es),
                   st.sampled_from(["h1", "h2", "h3"]), st.integers(0, 3),
                   st.sets(st.tuples(st.sampled_from(HOLDERS), st.sampled_from(HOLDERS)), max_size=4))


@given(graphs, graphs, graphs)
def test_wait_for_graph_merge_is_commutative_associative_idempotent(
        a: dl.WaitForGraph, b: dl.WaitForGraph, c: dl.WaitForGraph) -> None:
    assert a.merge(b) == b.merge(a)
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert a.merge(a) == a and a.merge(b).merge(b) == a.merge(b)


def test_mesh_wide_pass_picks_the_same_victim_in_any_merge_order() -> None:
    parts_ = [dl.WaitForGraph.of_home("h1", 2, [("A", "B")]), dl.WaitForGraph.of_home("h2", 5, [("B", "C")]),
              dl.WaitForGraph.of_home("h3", 1, [("C", "A"), ("D", "A")])]
    age = {"A": 3.0, "B": 1.0, "C": 2.0, "D": 9.0}.__getitem__
    victims = set()
    for perm in itertools.permutations(parts_):
        g = perm[0].merge(perm[1]).merge(perm[2])
        cycle = dl.find_any_cycle(g.adjacency())
        assert cycle is not None and sorted(cycle) == ["A", "B", "C"]
        victims.add(dl.pick_victim(cycle, age))
    assert victims == {"A"}


def homes_pass(tables: dict[str, LockTable], now: float) -> list[tuple[tuple[str, ...], str]]:
    """One mesh-wide pass as the daemons run it: merge every home's part, choose victims, and
    refuse each victim on the home where it waits.  Returns (cycle, victim) per refusal."""
    graph = dl.WaitForGraph()
    for home, t in tables.items():
        since = {w.holder: w.since for w in t.waiters()}
        edges = [(w, h) for w, hs in t.wait_edges().items() for h in hs]
        graph = graph.merge(dl.WaitForGraph.of_home(home, 1, edges, since))
    out = []
    for cycle, victim in graph.victims():
        for t in tables.values():
            effects = t.abort_victim(victim, cycle, now)
            ended = [e for e in effects if isinstance(e, WaitEnded) and e.cause is Phase.DEADLOCKED]
            out += [(e.cycle, e.waiter.holder) for e in ended]
    return out


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_cycle_across_three_homes_found_by_the_pass_has_exactly_one_victim(n: int) -> None:
    """Each home queues its part of the ring without seeing the others' edges (they raced),
    so no request is refused at request time; the pass over the merged graphs refuses
    exactly one waiter, the youngest, and the others keep waiting."""
    homes = {f"h{i}": LockTable() for i in range(3)}
    hs = [f"H{i}" for i in range(n)]
    home_of = {i: f"h{i % 3}" for i in range(n)}
    for i, h in enumerate(hs):
        grant(homes[home_of[i]], f"/p{i}", W, h)
    for i, h in enumerate(hs):                  # H_i waits for /p_{i+1}, held by H_{i+1}
        j = (i + 1) % n
        res, _ = homes[home_of[j]].acquire(f"/p{j}", W, h, 15, f"w{i}", 1 + i, wait=True)
        assert isinstance(res, Queued), res
    refused = homes_pass(homes, 10)
    assert len(refused) == 1
    cycle, victim = refused[0]
    assert victim == hs[-1] and cycle[0] == victim and sorted(cycle) == sorted(hs)
    assert sorted(w.holder for t in homes.values() for w in t.waiters()) == sorted(hs[:-1])
    assert homes_pass(homes, 11) == []          # the graph is acyclic now: nobody else


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.permutations([*HOLDERS, "E", "F"]), st.lists(st.integers(0, 6), min_size=6, max_size=6),
       st.lists(st.sampled_from(["h0", "h1", "h2"]), min_size=6, max_size=6),
       st.randoms(use_true_random=False))
def test_random_acyclic_waits_across_homes_cost_no_victim(order: list[str], targets: list[int],
                                                          homes_of: list[str], rnd: random.Random) -> None:
    tables = {h: LockTable() for h in ("h0", "h1", "h2")}
    where = {h: homes_of[i] for i, h in enumerate(order)}
    for h in order:
        grant(tables[where[h]], f"/{h}", W, h)
    reqs = [(i, h) for i, h in enumerate(order) if i < targets[i] < len(order)]
    rnd.shuffle(reqs)
    for i, h in reqs:
        other = order[targets[i]]
        assert isinstance(tables[where[other]].acquire(f"/{other}", W, h, 15, f"w{h}", 1,
                                                        wait=True)[0], Queued)
    assert homes_pass(tables, 2) == []


def test_pass_leaves_a_cycle_whose_edge_was_released_just_before_alone() -> None:
    """A stale merged graph still shows A -> B -> A, but B's wait ended before the abort:
    abort_victim checks the victim's edge on its own home and refuses nobody."""
    h1, h2 = LockTable(), LockTable()
    grant(h1, "/a", W, "A")
    grant(h2, "/b", W, "B")
    assert isinstance(h2.acquire("/b", W, "A", 15, "wa", 1, wait=True)[0], Queued)   # A -> B
    assert isinstance(h1.acquire("/a", W, "B", 15, "wb", 2, wait=True)[0], Queued)   # B -> A
    stale = dl.WaitForGraph.of_home("h1", 1, [("B", "A")], {"B": 2.0}).merge(
        dl.WaitForGraph.of_home("h2", 1, [("A", "B")], {"A": 1.0}))
    [(cycle, victim)] = stale.victims()
    assert victim == "B"
    h1.release("/a", "A", None, 3)                                    # B gets /a: B -> A is gone
    assert not [e for e in h1.abort_victim("B", cycle, 4) if isinstance(e, WaitEnded)]
    assert isinstance(h2.acquire("/b", W, "A", 15, "wa", 4, wait=True)[0], Queued)   # A still waits


@settings(max_examples=EXAMPLES * 3, deadline=None)
@given(st.sets(st.tuples(st.sampled_from(NODES), st.sampled_from(NODES)), max_size=20))
def test_break_cycles_leaves_an_acyclic_graph_with_one_victim_per_cycle(
        edges: set[tuple[str, str]]) -> None:
    adj = dl.adjacency(edges)
    out = dl.break_cycles(adj, lambda h: 0.0)
    victims = [v for _, v in out]
    assert len(victims) == len(set(victims))
    rest = {k: v for k, v in adj.items() if k not in victims}
    assert dl.find_any_cycle(rest) is None
    for cycle, victim in out:                     # each is a real cycle, rotated to the victim
        assert cycle[0] == victim
        for a, b in zip(cycle, [*cycle[1:], cycle[0]], strict=True):
            assert b in adj[a]


# ==========================================================================================
# Store and service
# ==========================================================================================
def test_store_refuses_a_database_without_wal_and_full_sync(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "x.db")
    db.execute("PRAGMA journal_mode=DELETE")
    with pytest.raises(StateError, match="wal"):
        check_pragmas(db, tmp_path / "x.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    with pytest.raises(StateError, match="synchronous"):
        check_pragmas(db, tmp_path / "x.db")


def test_service_restart_restores_grants_with_a_fresh_lease_and_never_reuses_tokens(tmp_path: Path) -> None:
    clock = Clock(1000.0)
    svc = LockService(tmp_path / "locks.db", clock=clock, lock_delay_s=15)
    a = svc.acquire("/f", W, "A", ttl_s=15, request_id="ra").result
    b = svc.acquire("/g", R, "B", ttl_s=30, request_id="rb").result
    assert isinstance(a, Granted) and isinstance(b, Granted)
    svc.release("/g", "B")
    clock.t = 1014.0
    svc.tick()
    svc.close()
    clock2 = Clock(5.0)                      # a new process: the monotonic clock restarted
    svc2 = LockService(tmp_path / "locks.db", clock=clock2, lock_delay_s=15)
    [g] = svc2.snapshot().result.grants
    assert (g.token, g.holder, g.expires_at) == (a.token, "A", 20.0)
    again = svc2.acquire("/f", W, "A", ttl_s=15, request_id="ra").result      # L6 across restart
    assert isinstance(again, Granted) and again.token == a.token and again.how is How.RETRY
    c = svc2.acquire("/h", W, "C").result
    assert isinstance(c, Granted) and c.token > b.token
    svc2.close()


def test_expired_lock_delay_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock(0.0)
    svc = LockService(tmp_path / "locks.db", clock=clock, lock_delay_s=15)
    svc.acquire("/f", W, "A", ttl_s=5)
    clock.t = 6.0
    assert [k for k, _ in svc.tick().events] == ["lock.expired"]
    svc.close()
    svc2 = LockService(tmp_path / "locks.db", clock=Clock(0.0), lock_delay_s=15)
    res = svc2.acquire("/f", W, "B").result
    assert isinstance(res, Conflict) and res.retry_at == 15.0
    svc2.close()


def test_service_journal_events(tmp_path: Path) -> None:
    clock = Clock(0.0)
    svc = LockService(tmp_path / "l.db", clock=clock, home="h1", lock_delay_s=0)
    out = svc.acquire("/f", W, "A", ttl_s=5)
    assert [k for k, _ in out.events] == ["lock.granted"] and out.events[0][1]["home"] == "h1"
    q = svc.acquire("/f", W, "B", ttl_s=5, wait_s=100)
    assert isinstance(q.result, Queued) and q.events == []
    rel = svc.release("/f", "A")
    assert [k for k, _ in rel.events] == ["lock.released", "lock.granted"]   # B's grant journaled too
    assert rel.events[1][1]["holder"] == "B" and rel.events[1][1]["waited"] is True
    w = svc.wait(q.result.request_id, 1)
    assert isinstance(w.result, Granted) and w.result.grant.holder == "B"
    clock.t = 6.0
    assert [(k, b["holder"]) for k, b in svc.tick().events] == [("lock.expired", "B")]
    svc.close()


def test_tick_renews_live_holders_and_releases_dead_ones(tmp_path: Path) -> None:
    clock = Clock(0.0)
    svc = LockService(tmp_path / "l.db", clock=clock, lock_delay_s=15, grace_s=5)
    for h in ("alive", "dead", "absent", "remote", "stranger"):
        svc.acquire(f"/{h}", W, h, ttl_s=10)
    seen = {"alive": Liveness.ALIVE, "dead": Liveness.ALIVE, "absent": Liveness.ALIVE,
            "remote": Liveness.ALIVE}
    svc.tick(seen)                                                    # all seen alive at t=0
    clock.t = 4.0
    out = svc.tick({"alive": Liveness.ALIVE, "dead": Liveness.DEAD, "absent": Liveness.ABSENT,
                    "remote": Liveness.UNKNOWN, "stranger": Liveness.ABSENT})
    assert sorted((b["holder"], b["reason"]) for k, b in out.events if k == "lock.released") == [
        ("absent", "gone"), ("dead", "gone")]
    clock.t = 12.0      # stranger (never seen alive) ran out; remote renewed at 4 (within grace)
    out = svc.tick({"alive": Liveness.ALIVE, "remote": Liveness.UNKNOWN})
    assert [b["holder"] for k, b in out.events if k == "lock.expired"] == ["stranger"]
    clock.t = 14.5      # remote: past the grace since last seen alive -> not renewed -> runs out
    svc.tick({"alive": Liveness.ALIVE, "remote": Liveness.UNKNOWN})
    assert sorted(g.holder for g in svc.snapshot().result.grants) == ["alive"]
    svc.close()


def test_failed_write_stops_the_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    svc = LockService(tmp_path / "l.db")

    def boom(change: object) -> None:
        raise StateError("disk I/O error")

    monkeypatch.setattr(svc._store, "commit", boom)
    with pytest.raises(StateError):
        svc.acquire("/f", W, "A")
    with pytest.raises(StateError, match="stopped"):
        svc.snapshot()


def test_threads_never_hold_incompatible_locks_at_once(tmp_path: Path) -> None:
    svc = LockService(tmp_path / "l.db", lock_delay_s=0)
    inside: dict[str, int] = {"w": 0, "r": 0}
    errors: list[str] = []
    mu = threading.Lock()

    def worker(name: str, n: int) -> None:
        rnd = random.Random(name)
        for _ in range(n):
            mode = rnd.choice([W, R])
            out = svc.acquire_wait("/shared/file" if rnd.random() < 0.5 else "/shared", mode, name,
                                   wait_s=5)
            if not isinstance(out.result, Granted):
                errors.append(f"{name}: {out.result}")
                continue
            k = "w" if mode is W else "r"
            with mu:
                inside[k] += 1
                if inside["w"] > 1 or (inside["w"] and inside["r"]):
                    errors.append(f"overlap {inside}")
            time.sleep(0.0005)
            with mu:
                inside[k] -= 1
            svc.release(out.result.grant.target, name, out.result.token)

    threads = [threading.Thread(target=worker, args=(f"t{i}", 25)) for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    svc.close()


def test_async_wait_is_woken_by_a_release_and_gives_up_on_time(tmp_path: Path) -> None:
    async def main() -> None:
        svc = LockService(tmp_path / "l.db")
        svc.acquire("/f", W, "A")
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, svc.release, "/f", "A")
        t0 = time.monotonic()
        out = await svc.acquire_async("/f", W, "B", wait_s=5)
        assert isinstance(out.result, Granted) and time.monotonic() - t0 < 2
        out = await svc.acquire_async("/f", W, "C", wait_s=0.2)
        assert isinstance(out.result, Conflict) and out.result.holders == ("B",)
        assert "gave up after waiting" in out.result.reason and "held by B" in out.result.reason
        out = svc.acquire_wait("/f", W, "E", wait_s=0.1)                   # the blocking helper
        assert isinstance(out.result, Conflict) and "held by B" in out.result.reason
        assert svc.snapshot().result.waiting == []
        task = asyncio.create_task(svc.acquire_async("/f", W, "D", wait_s=30))
        await asyncio.sleep(0.1)
        assert len(svc.snapshot().result.waiting) == 1
        task.cancel()                                    # the client went away
        with pytest.raises(asyncio.CancelledError):
            await task
        assert svc.snapshot().result.waiting == []
        svc.close()

    asyncio.run(main())


# ==========================================================================================
# Daemon ops (a stand-in daemon: host, paths, record, locks)
# ==========================================================================================
class FakeDaemon:
    def __init__(self, home: Path, host: str = "h1") -> None:
        self.host = host
        self.paths = StatePaths(home / ".agents", home / "inbox")
        self.locks: LockService | None = None
        self.events: list[tuple[str, dict[str, Any]]] = []

    async def record(self, kind: str, body: dict[str, Any]) -> object:
        self.events.append((kind, body))
        return None


def test_ops_grant_conflict_release_and_exit_codes(tmp_path: Path) -> None:
    async def main() -> None:
        d = FakeDaemon(tmp_path)
        locks_api.attach(d)
        g = await locks_api.op_lock_acquire(d, {"target": "/w/f", "mode": "write", "holder": "host-a-1"})
        assert {"token", "mode", "target", "holder", "home", "expires_in"} <= set(g)
        assert (g["home"], g["holder"], g["how"]) == ("h1", "host-a-1", "new")
        with pytest.raises(Refused) as exc:
            await locks_api.op_lock_acquire(d, {"target": "/w", "mode": "read",
                                                "shell_user": "u", "shell_pid": 42})
        assert "host-a-1" in exc.value.message
        assert from_dict(exc.value.to_dict()).exit_code == EXIT_REFUSED      # survives the wire
        with pytest.raises(Refused):
            await locks_api.op_lock_release(d, {"target": "/w/f", "holder": "intruder"})
        chk = await locks_api.op_lock_check(d, {"target": "/w/f/deeper", "token": g["token"]})
        assert chk["valid"] and chk["holder"] == "host-a-1"
        assert not (await locks_api.op_lock_check(d, {"target": "/w/f", "token": 999}))["valid"]
        listing = await locks_api.op_lock_list(d, {})
        assert [x["token"] for x in listing["grants"]] == [g["token"]]
        r = await locks_api.op_lock_release(d, {"target": "/w/f", "holder": "host-a-1"})
        assert r["released"]
        assert [k for k, _ in d.events] == ["lock.granted", "lock.released"]
        s = await locks_api.op_lock_acquire(d, {"target": "/w", "mode": "read", "shell_user": "u",
                                                "shell_pid": 42})
        assert s["holder"] == "shell:u@h1:42"
        assert d.locks is not None
        d.locks.close()

    asyncio.run(main())


def test_named_lock_homed_at_another_anchor_fails_with_exit_4(tmp_path: Path) -> None:
    async def main() -> None:
        d = FakeDaemon(tmp_path)
        locks_api.attach(d)
        g = await locks_api.op_lock_acquire(d, {"target": "@deploy", "holder": "a"})   # no peers.conf
        assert g["home"] == "h1"
        d.paths.home.mkdir(parents=True, exist_ok=True)
        d.paths.peers_conf.write_text("# anchor first\nother-host\nh1\n")
        with pytest.raises(TransportError) as exc:
            await locks_api.op_lock_acquire(d, {"target": "@deploy", "holder": "a"})
        assert exc.value.exit_code == EXIT_TRANSPORT
        assert "home other-host unreachable" in exc.value.message
        assert (await locks_api.op_lock_acquire(d, {"target": "/p", "holder": "a"}))["home"] == "h1"
        assert d.locks is not None
        d.locks.close()

    asyncio.run(main())


def test_ticker_releases_the_lock_of_a_dead_shell(tmp_path: Path) -> None:
    async def main() -> None:
        d = FakeDaemon(tmp_path)
        locks_api.attach(d)
        proc = subprocess.Popen(["sleep", "30"])
        await locks_api.op_lock_acquire(d, {"target": "/f", "shell_user": "u", "shell_pid": proc.pid})
        ticker = asyncio.create_task(locks_api.run_ticker(d, period_s=0.02))
        await asyncio.sleep(0.1)
        assert [k for k, _ in d.events] == ["lock.granted"]
        proc.kill()
        proc.wait()
        for _ in range(100):
            await asyncio.sleep(0.02)
            if len(d.events) > 1:
                break
        ticker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await ticker
        assert d.events[-1][0] == "lock.released" and d.events[-1][1]["reason"] == "gone"
        assert d.locks is not None
        d.locks.close()

    asyncio.run(main())


# ==========================================================================================
# CLI against a real socket server running the lock ops
# ==========================================================================================
@pytest.fixture
def lock_home() -> Iterator[dict[str, str]]:
    from meshd.errors import UnknownAgent
    from meshd.transport import unix

    root = Path(tempfile.mkdtemp(prefix="mlk", dir="/tmp"))
    d = FakeDaemon(root)
    d.paths.state_dir.mkdir(parents=True)
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def handler(op: str, args: dict[str, Any]) -> Any:
        if op == "whoami":
            raise UnknownAgent("not in a pane")
        return await locks_api.OPS[op](d, args)

    async def serve() -> None:
        locks_api.attach(d)
        server = await unix.serve(d.paths.socket, handler, max_frame=1 << 20, timeout_s=10)
        ticker = asyncio.create_task(locks_api.run_ticker(d, period_s=0.05))
        ready.set()
        await stop.wait()
        ticker.cancel()
        server.close()

    th = threading.Thread(target=loop.run_until_complete, args=(serve(),))
    th.start()
    assert ready.wait(10)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TMUX", "MESHD_"))}
    env.update(MESHD_HOME=str(d.paths.home), HOME=str(root))
    try:
        yield env
    finally:
        loop.call_soon_threadsafe(stop.set)
        th.join(10)
        assert d.locks is not None
        d.locks.close()
        shutil.rmtree(root, ignore_errors=True)


def mesh_lock(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from meshd.cli.lock_cmd import lock; sys.argv[0] = 'mesh lock'; lock()"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          env=env, timeout=60)


def test_cli_acquire_check_release_list(lock_home: dict[str, str], tmp_path: Path) -> None:
    target = tmp_path / "src"
    target.mkdir()
    r = mesh_lock(lock_home, "acquire", str(target), "--mode", "write", "--json", "--as", "host-s-w")
    assert r.returncode == 0, r.stderr
    g = json.loads(r.stdout)
    assert g["target"] == os.path.realpath(target) and g["holder"] == "host-s-w"
    assert {"token", "mode", "home", "expires_in"} <= set(g)
    r = mesh_lock(lock_home, "acquire", str(target / "a.py"), "--mode", "read")   # shell holder
    assert r.returncode == EXIT_REFUSED and "host-s-w" in r.stderr
    assert mesh_lock(lock_home, "check", str(target / "a.py"), "--token", str(g["token"])).returncode == 0
    assert mesh_lock(lock_home, "check", str(target), "--token", str(g["token"] + 1)).returncode == 3
    listing = json.loads(mesh_lock(lock_home, "list", "--json").stdout)
    assert [x["holder"] for x in listing["grants"]] == ["host-s-w"]
    assert mesh_lock(lock_home, "release", str(target), "--as", "intruder").returncode == EXIT_REFUSED
    assert mesh_lock(lock_home, "release", str(target), "--as", "host-s-w").returncode == 0
    r = mesh_lock(lock_home, "acquire", str(target), "--mode", "read")
    assert r.returncode == 0 and int(r.stdout.strip()) > g["token"]


def test_cli_run_holds_the_lock_for_the_command(lock_home: dict[str, str], tmp_path: Path) -> None:
    f = tmp_path / "data"
    script = ('echo "$MESH_LOCK_TOKEN $MESH_LOCK_TARGET"; '
              f'{sys.executable} -c "import sys; from meshd.cli.lock_cmd import lock; '
              "sys.argv[0]='x'; lock()\" check \"$MESH_LOCK_TARGET\" --token $MESH_LOCK_TOKEN; "
              "exit 7")
    r = mesh_lock(lock_home, "run", str(f), "--mode", "write", "--", "sh", "-c", script)
    assert r.returncode == 7, r.stderr
    token, target = r.stdout.split()[:2]
    assert int(token) > 0 and target == str(f) and f"valid: token {token}" in r.stdout
    assert json.loads(mesh_lock(lock_home, "list", "--json").stdout)["grants"] == []


def test_cli_exit_codes_for_conflict_unreachable_home_and_no_daemon(lock_home: dict[str, str],
                                                                    tmp_path: Path) -> None:
    assert mesh_lock(lock_home, "acquire", "@deploy", "--as", "a").returncode == 0
    r = mesh_lock(lock_home, "run", "@deploy", "--as", "b", "--", "true")
    assert r.returncode == EXIT_REFUSED
    Path(lock_home["MESHD_HOME"], "peers.conf").write_text("elsewhere\n")
    r = mesh_lock(lock_home, "acquire", "@other", "--as", "a")
    assert r.returncode == EXIT_TRANSPORT and "home elsewhere unreachable" in r.stderr
    down = {**lock_home, "MESHD_HOME": str(tmp_path / "nowhere")}
    assert mesh_lock(down, "acquire", "/x").returncode == EXIT_TRANSPORT
