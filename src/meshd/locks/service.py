"""The lock service of one home: the pure table, its SQLite store and waiting callers.

Blocking and thread-safe: every method takes one short internal lock, runs the
table at ``clock()``, commits what changed (``synchronous=FULL``) and only then
returns -- so nothing is acknowledged before it is on disk.  Waiting never
holds the lock.  The daemon calls the blocking methods through
``asyncio.to_thread`` and waits for queued requests with
:meth:`LockService.acquire_async`, which parks an asyncio future, not a thread
(a long ``--wait`` must not eat the thread pool).

Every method returns an :class:`Outcome`: the result and the journal events
the call caused (``lock.granted``, ``lock.released``, ``lock.expired``) --
including grants to *other* waiters that the call freed.  The caller journals
them.

Leases: the daemon calls :meth:`tick` about once a second with the liveness of
every holder.  ALIVE holders are renewed (a lock lives while its pane lives);
DEAD ones lose their locks at once; an ABSENT agent (gone from the registry
after having been seen alive) counts as dead; UNKNOWN ones (another host's,
unreachable) are renewed for ``grace_s`` after they were last seen alive and
then left to run out.  Holders never seen alive (``--as`` names) keep a lock
only while they renew it themselves.

A failed commit makes the service refuse everything after it (its memory is
ahead of the disk); the daemon should exit and restart from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Generic, TypeVar

from meshd.errors import MeshError, StateError, UsageError
from meshd.locks.deadlock import Adjacency, WaitForGraph
from meshd.locks.modes import Mode
from meshd.locks.store import Change, LockStore
from meshd.locks.table import (
    AcquireResult,
    Blocked,
    Cancelled,
    Check,
    Conflict,
    Deadlock,
    DelayEnded,
    Effect,
    Grant,
    Granted,
    GrantEnded,
    GrantStarted,
    LockDelay,
    LockTable,
    Phase,
    Queued,
    Rejected,
    Released,
    Renewed,
    SavedDelay,
    SavedGrant,
    WaitEnded,
    Waiter,
)

R = TypeVar("R")
JournalEvent = tuple[str, dict[str, Any]]

DEFAULT_TTL_S = 15.0
DEFAULT_GRACE_S = 5.0
DEFAULT_LOCK_DELAY_S = 15.0
MAX_TTL_S = 24 * 3600.0


class Liveness(StrEnum):
    ALIVE = "alive"        # pane or shell process exists: renew its locks
    DEAD = "dead"          # its process is gone: release now
    ABSENT = "absent"      # not in the registry: dead if it was seen alive before
    UNKNOWN = "unknown"    # cannot tell (another host): renew within the grace


@dataclass(frozen=True)
class Outcome(Generic[R]):
    result: R
    events: list[JournalEvent]


@dataclass(frozen=True)
class Snapshot:
    now: float
    fence: int
    grants: list[Grant]
    waiting: list[tuple[Waiter, Blocked]]
    delays: list[LockDelay]
    edges: dict[str, set[str]]


class _Pending:
    """A queued request and the callers waiting for its end."""

    __slots__ = ("callers", "done", "futures", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: AcquireResult | None = None
        self.futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.callers = 0


class LockService:
    def __init__(self, db_path: Path, *, home: str = "", clock: Callable[[], float] = time.monotonic,
                 default_ttl_s: float = DEFAULT_TTL_S, max_ttl_s: float = MAX_TTL_S,
                 lock_delay_s: float = DEFAULT_LOCK_DELAY_S, grace_s: float = DEFAULT_GRACE_S) -> None:
        self.home, self.clock = home, clock
        self.default_ttl_s, self.max_ttl_s = default_ttl_s, max_ttl_s
        self.lock_delay_s, self.grace_s = lock_delay_s, grace_s
        self._mu = threading.Lock()
        self._store = LockStore(db_path)
        saved = self._store.load()
        self._table = LockTable.restore(saved.grants, saved.delays, fence=saved.fence,
                                        now=clock(), lock_delay_s=lock_delay_s)
        self._pending: dict[str, _Pending] = {}
        self._seen: dict[str, float] = {}           # holder -> when last seen alive
        self._backlog: list[JournalEvent] = []      # events of calls whose caller went away
        self._failed: StateError | None = None
        self._graph_version = 0
        # Called (from any thread) when a request starts or stops waiting, so that the
        # daemon's mesh-wide deadlock pass can look again at once.
        self.on_wait_change: Callable[[], None] | None = None

    @property
    def path(self) -> Path:
        return self._store.path

    def close(self) -> None:
        with self._mu:
            self._store.close()

    # -- acquire and wait ------------------------------------------------------------------
    def acquire(self, target: str, mode: Mode | str, holder: str, *, ttl_s: float | None = None,
                request_id: str | None = None, wait_s: float = 0.0,
                extra_edges: Adjacency | None = None) -> Outcome[AcquireResult]:
        """Grant, refuse, or (``wait_s`` > 0) queue without blocking.  A queued request must be
        followed by :meth:`wait` (or :meth:`cancel`); it gives up by itself after ``wait_s``."""
        return self._acquire(target, mode, holder, ttl_s, request_id, wait_s, extra_edges, None)

    def wait(self, request_id: str, timeout_s: float) -> Outcome[AcquireResult]:
        """Block until a queued request is granted or ends, at most ``timeout_s``."""
        p = self._pending.get(request_id)
        if p is not None:
            p.done.wait(max(0.0, timeout_s))
        return self._finish(request_id, timeout_s)

    def acquire_wait(self, target: str, mode: Mode | str, holder: str, *, ttl_s: float | None = None,
                     request_id: str | None = None, wait_s: float = 0.0) -> Outcome[AcquireResult]:
        """:meth:`acquire` then :meth:`wait` (for scripts and tests; the daemon uses the async one)."""
        first = self.acquire(target, mode, holder, ttl_s=ttl_s, request_id=request_id, wait_s=wait_s)
        if not isinstance(first.result, Queued):
            return first
        last = self.wait(first.result.request_id, wait_s)
        return Outcome(last.result, first.events + last.events)

    async def acquire_async(self, target: str, mode: Mode | str, holder: str, *,
                            ttl_s: float | None = None, request_id: str | None = None,
                            wait_s: float = 0.0, extra_edges: Adjacency | None = None
                            ) -> Outcome[AcquireResult]:
        """The daemon's acquire: blocking parts in a thread, the wait on an asyncio future.

        If the calling task is cancelled (client gone, request deadline) the place in
        the queue is given up -- and a grant that came too late to be answered is
        released; the events of that cleanup are journaled by the next call.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        first = await asyncio.to_thread(self._acquire, target, mode, holder, ttl_s, request_id,
                                        wait_s, extra_edges, (loop, fut))
        if not isinstance(first.result, Queued):
            return first
        rid = first.result.request_id
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(fut), wait_s)
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.to_thread(self._abandon, rid))
            raise
        last = await asyncio.to_thread(self._finish, rid, wait_s)
        return Outcome(last.result, first.events + last.events)

    def cancel(self, request_id: str) -> Outcome[Cancelled]:
        """Give up a queued request for everyone waiting on it (its waiters get a refusal)."""
        out = self._run(lambda now: self._table.cancel(request_id, now))
        with self._mu:
            self._pending.pop(request_id, None)
        return out

    # -- holders ---------------------------------------------------------------------------
    def release(self, target: str, holder: str, token: int | None = None
                ) -> Outcome[Released | Rejected]:
        return self._run(lambda now: self._table.release(target, holder, token, now))

    def renew(self, target: str, holder: str, token: int | None = None, ttl_s: float | None = None
              ) -> Outcome[Renewed | Rejected]:
        ttl = None if ttl_s is None else self._ttl(ttl_s)
        return self._run(lambda now: self._table.renew(target, holder, token, now, ttl))

    def holder_gone(self, holder: str) -> Outcome[None]:
        """The holder's pane or session died (the daemon may call this on ``agent.gone``)."""
        def go(now: float) -> tuple[None, list[Effect]]:
            self._seen.pop(holder, None)
            return None, self._table.holder_gone(holder, now)
        return self._run(go)

    def check(self, target: str, token: int) -> Outcome[Check]:
        return self._run(lambda now: (self._table.check(target, token, now), self._table.expire(now)))

    def tick(self, liveness: Mapping[str, Liveness] | None = None) -> Outcome[None]:
        """Renew live holders, drop dead ones, end what ran out."""
        return self._run(lambda now: (None, self._tick(now, liveness or {})))

    # -- reads -----------------------------------------------------------------------------
    def holders(self) -> set[str]:
        with self._mu:
            return self._table.holders()

    def snapshot(self) -> Outcome[Snapshot]:
        def read(now: float) -> tuple[Snapshot, list[Effect]]:
            effects = self._table.expire(now)
            t = self._table
            return Snapshot(now, t.fence, t.grants(), t.blocked(), t.delays(), t.wait_edges()), effects
        return self._run(read)

    def wait_for_graph(self) -> WaitForGraph:
        """This home's part of the mesh-wide wait-for graph.  Its version is wall-clock
        nanoseconds (kept increasing), so a restarted home's part still replaces the old one."""
        with self._mu:
            self._graph_version = max(self._graph_version + 1, time.time_ns())
            edges = [(w, h) for w, hs in self._table.wait_edges().items() for h in hs]
            wall = time.time() - self.clock()
            since = {w.holder: round(wall + w.since, 6) for w in self._table.waiters()}
            return WaitForGraph.of_home(self.home, self._graph_version, edges, since)

    def abort_victim(self, holder: str, cycle: tuple[str, ...]) -> Outcome[bool]:
        """Refuse ``holder``'s wait here as the victim of a mesh-wide deadlock ``cycle``.
        False when it no longer waits here on the next holder of the cycle (a phantom)."""
        def go(now: float) -> tuple[bool, list[Effect]]:
            effects = self._table.abort_victim(holder, cycle, now)
            return any(isinstance(e, WaitEnded) and e.cause is Phase.DEADLOCKED for e in effects), effects
        return self._run(go)

    def seconds_to_next_deadline(self) -> float | None:
        with self._mu:
            t = self._table.next_deadline()
            return None if t is None else max(0.0, t - self.clock())

    # -- internals -------------------------------------------------------------------------
    def _ttl(self, ttl_s: float | None) -> float:
        ttl = self.default_ttl_s if ttl_s is None else float(ttl_s)
        if not (0 < ttl <= self.max_ttl_s and math.isfinite(ttl)):
            raise UsageError(f"--ttl {ttl:g}: a lease lasts more than 0 and at most "
                             f"{self.max_ttl_s:g} s")
        return ttl

    def _acquire(self, target: str, mode: Mode | str, holder: str, ttl_s: float | None,
                 request_id: str | None, wait_s: float, extra_edges: Adjacency | None,
                 fut: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None
                 ) -> Outcome[AcquireResult]:
        ttl = self._ttl(ttl_s)
        rid = request_id or uuid.uuid4().hex
        wait = wait_s > 0

        def go(now: float) -> tuple[AcquireResult, list[Effect]]:
            res, effects = self._table.acquire(target, mode, holder, ttl, rid, now, wait,
                                               wait_until=now + wait_s if wait else None,
                                               extra_edges=extra_edges)
            if isinstance(res, Queued):
                p = self._pending.setdefault(res.request_id, _Pending())
                p.callers += 1
                if fut is not None:
                    p.futures.append(fut)
            return res, effects
        out = self._run(go)
        if isinstance(out.result, Queued):
            self._waits_changed()
        return out

    def _finish(self, request_id: str, waited_s: float) -> Outcome[AcquireResult]:
        """One caller stops waiting: its result, and the queue place given up if it was last."""
        def go(now: float) -> tuple[AcquireResult, list[Effect]]:
            effects = self._table.expire(now)
            p = self._pending.get(request_id)
            ended = [r for rid, r in self._results(effects, now) if rid == request_id]
            if ended:
                if p is not None:
                    self._drop_caller(request_id, p)
                return ended[0], effects
            if p is not None and p.result is not None:
                self._drop_caller(request_id, p)
                return p.result, effects
            why = self._timeout(request_id, now, waited_s)
            if p is not None:
                p.callers -= 1
                if p.callers > 0:
                    return why, effects
                self._pending.pop(request_id, None)
            res, more = self._table.cancel(request_id, now)
            if res.granted is not None:      # granted by this very sweep
                return Granted(res.granted), effects + more
            return why, effects + more
        return self._run(go)

    def _abandon(self, request_id: str) -> None:
        """The waiting caller went away: leave the queue, or release what came too late."""
        def go(now: float) -> tuple[None, list[Effect]]:
            p = self._pending.get(request_id)
            if p is not None:
                p.callers -= 1
                if p.callers > 0:
                    return None, []
                self._pending.pop(request_id, None)
            res, effects = self._table.cancel(request_id, now)
            g = res.granted
            if g is not None:
                effects += self._table.release(g.target, g.holder, g.token, now)[1]
            return None, effects
        with contextlib.suppress(MeshError):
            out = self._run(go)
            with self._mu:
                self._backlog.extend(out.events)

    def _drop_caller(self, request_id: str, p: _Pending) -> None:
        p.callers -= 1
        if p.callers <= 0:
            self._pending.pop(request_id, None)

    def _timeout(self, request_id: str, now: float, waited_s: float) -> AcquireResult:
        b = next((b for w, b in self._table.blocked() if w.request_id == request_id), None)
        return _gave_up(self._table, b, now, waited_s)

    def _tick(self, now: float, liveness: Mapping[str, Liveness]) -> list[Effect]:
        effects: list[Effect] = []
        for holder, state in liveness.items():
            seen = self._seen.get(holder)
            if state is Liveness.ALIVE:
                self._seen[holder] = now
                effects += self._table.renew_holder(holder, now)[1]
            elif state is Liveness.DEAD or (state is Liveness.ABSENT and seen is not None):
                self._seen.pop(holder, None)
                effects += self._table.holder_gone(holder, now)
            elif state is Liveness.UNKNOWN and seen is not None and now - seen <= self.grace_s:
                effects += self._table.renew_holder(holder, now)[1]
        effects += self._table.expire(now)
        live = self._table.holders()
        for holder in [h for h in self._seen if h not in live]:
            del self._seen[holder]
        return effects

    def _run(self, fn: Callable[[float], tuple[R, list[Effect]]]) -> Outcome[R]:
        with self._mu:
            if self._failed is not None:
                raise StateError(f"the lock service stopped after a failed write: "
                                 f"{self._failed.message}", hint="restart meshd")
            now = self.clock()
            try:
                result, effects = fn(now)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            self._persist(effects)
            self._wake(effects, now)
            events, self._backlog = [*self._backlog, *self._events(effects)], []
            return Outcome(result, events)

    def _persist(self, effects: list[Effect]) -> None:
        change = Change(fence=self._table.fence)
        for e in effects:
            if isinstance(e, GrantStarted):
                g = e.grant
                change.grants[g.token] = SavedGrant(g.token, g.target, g.mode, g.holder, g.ttl_s,
                                                    g.request_id)
            elif isinstance(e, GrantEnded):
                change.grants[e.grant.token] = None
                if e.delay is not None:
                    d = e.delay
                    change.delays[d.token] = SavedDelay(d.token, d.target, d.mode, d.holder)
            elif isinstance(e, DelayEnded):
                change.delays[e.delay.token] = None
        if change.empty():
            return
        try:
            self._store.commit(change)
        except StateError as exc:
            self._failed = exc
            raise

    def _wake(self, effects: list[Effect], now: float) -> None:
        results = self._results(effects, now)
        for request_id, result in results:
            self._resolve(request_id, result)
        if results:
            self._waits_changed()

    def _waits_changed(self) -> None:
        hook = self.on_wait_change
        if hook is not None:
            with contextlib.suppress(Exception):
                hook()

    def _results(self, effects: list[Effect], now: float) -> list[tuple[str, AcquireResult]]:
        """How queued requests ended in ``effects``: granted, gave up, or dropped."""
        out: list[tuple[str, AcquireResult]] = []
        for e in effects:
            if isinstance(e, GrantStarted) and e.waited:
                out.append((e.grant.request_id, Granted(e.grant)))
            elif isinstance(e, WaitEnded) and e.cause is Phase.DEADLOCKED:
                out.append((e.waiter.request_id, Deadlock(e.cycle)))
            elif isinstance(e, WaitEnded) and e.cause is Phase.TIMED_OUT:
                out.append((e.waiter.request_id,
                            _gave_up(self._table, e.blocked, now, now - e.waiter.since)))
            elif isinstance(e, WaitEnded):
                out.append((e.waiter.request_id, Rejected(_WAIT_ENDED[e.cause])))
        return out

    def _resolve(self, request_id: str, result: AcquireResult) -> None:
        p = self._pending.get(request_id)
        if p is None or p.result is not None:
            return
        p.result = result
        p.done.set()
        for loop, fut in p.futures:
            with contextlib.suppress(RuntimeError):      # that loop is closed: nobody waits
                loop.call_soon_threadsafe(_set_done, fut)

    def _events(self, effects: list[Effect]) -> list[JournalEvent]:
        out: list[JournalEvent] = []
        for e in effects:
            if isinstance(e, GrantStarted):
                out.append(("lock.granted", {
                    **self._body(e.grant), "waited": e.waited,
                    "upgraded_from": e.replaces.token if e.replaces else None}))
            elif isinstance(e, GrantEnded) and e.cause is Phase.EXPIRED:
                out.append(("lock.expired", {**self._body(e.grant),
                                             "lock_delay_s": self.lock_delay_s}))
            elif isinstance(e, GrantEnded) and e.cause is not Phase.UPGRADED:
                out.append(("lock.released", {**self._body(e.grant), "reason": str(e.cause)}))
        return out

    def _body(self, g: Grant) -> dict[str, Any]:
        return {"home": self.home, "target": g.target, "mode": str(g.mode), "holder": g.holder,
                "token": g.token, "ttl_s": g.ttl_s, "request_id": g.request_id}


_WAIT_ENDED = {
    Phase.CANCELLED: "the wait was cancelled",
    Phase.GONE: "the holder's pane or session ended while it waited",
    Phase.LOST: "the lock being upgraded ended (released or expired) while the upgrade waited",
}


def _gave_up(table: LockTable, b: Blocked | None, now: float, waited_s: float) -> Conflict:
    if b is None:
        return Conflict((), (), f"gave up after waiting {waited_s:.1f} s")
    c = table.explain(b, now)
    return Conflict(c.holders, c.waiting, f"gave up after waiting {waited_s:.1f} s; {c.reason}",
                    c.retry_at)


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
