"""The lock table of one home: grants, FIFO waiters, leases, fencing.  Pure.

Every operation takes ``now`` (seconds on the home's monotonic clock) and
returns ``(result, effects)``; effects tell the service what to persist, what
to journal and which waiting callers to wake.  The table never reads a clock
and never does I/O, so every rule below is a unit test with a fake clock.

Rules (docs/locks.md has the long form):

* **Targets** are absolute paths (a folder covers everything inside it: keys
  overlap when one's components are a prefix of the other's) or ``@name``
  mesh-wide names (no hierarchy).
* **Compatibility** is :func:`meshd.locks.modes.compatible`; a holder never
  conflicts with itself.  Asking again for what one holds (or less: WRITE
  covers every mode, INTENT covers READ) returns the held grant; INTENT or
  READ -> WRITE by the same holder is an upgrade, granted when no other
  holder's lock conflicts with WRITE, with a new token.
* **FIFO**: a request is granted only when compatible with every other
  holder's grant, no lock-delay forbids it, and no earlier waiter on an
  overlapping target is still waiting -- except earlier waiters that
  (transitively) wait for this request's holder: queueing behind those would
  be a deadlock, so the request passes them (as PostgreSQL does).
* **One wait per holder**: a holder has at most one waiting request; this
  makes the holder-level wait-for graph exact.  A request whose wait would
  close a cycle fails at once with :class:`Deadlock` naming it; the requester
  is the only victim.
* **Leases**: a grant expires at ``expires_at = now + ttl_s`` (valid while
  ``now < expires_at``); renew keeps the token and restarts the lease.  An
  expired grant leaves a **lock-delay**: for ``lock_delay_s`` after
  ``expires_at`` nobody else gets a conflicting lock on an overlapping target.
  A release by the holder or the holder's death leaves no delay.
* **Fencing**: one counter per table; every new grant (and every upgrade)
  takes the next token.  Tokens are never reused; ``check`` is true only for
  the live, unexpired grant of that token on a covering target.
* **Idempotence**: an acquire with a ``request_id`` that is still waiting or
  held returns that same wait or grant (a retried request).

Request lifecycle, as a transition table (:data:`TRANSITIONS`)::

    NEW --queue--> WAITING --grant--> HELD --release/expire/gone/upgrade--> (end)
    NEW --grant--> HELD      WAITING --timeout/cancel/gone/lose--> (end)
"""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import NamedTuple

from meshd.locks.deadlock import Adjacency, find_cycle
from meshd.locks.modes import Mode, compatible, may_upgrade

Key = tuple[str, ...]
DEFAULT_LOCK_DELAY_S = 15.0
_NAME = re.compile(r"@[A-Za-z0-9][A-Za-z0-9._:+/-]{0,199}")


# -- targets -------------------------------------------------------------------------------
def normalize(target: str) -> str:
    """The canonical spelling of a target; raises ValueError for anything else.

    Paths are made canonical lexically (``//a/./b/../c`` -> ``/a/c``); the CLI
    resolves symlinks first, the table does no file access.
    """
    if target.startswith("@"):
        if not _NAME.fullmatch(target):
            raise ValueError(f"bad lock name {target!r}: @ then letters, digits, . _ : + / -")
        return target
    if not target.startswith("/") or "\x00" in target:
        raise ValueError(f"bad lock target {target!r}: an absolute path or @name")
    return "/" + "/".join(c for c in posixpath.normpath(target).split("/") if c)


def key_of(target: str) -> Key:
    """``/a/b`` -> ``("/", "a", "b")``; ``@x`` -> ``("@x",)``."""
    t = normalize(target)
    return (t,) if t.startswith("@") else ("/", *(c for c in t.split("/") if c))


def overlaps(a: Key, b: Key) -> bool:
    """One key is the other or inside it (component-wise, so /ab and /a do not overlap)."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def covers(outer: Key, inner: Key) -> bool:
    return inner[:len(outer)] == outer


# Asking for a mode in this set while holding the key returns the held grant.
COVERS: dict[Mode, frozenset[Mode]] = {
    Mode.READ: frozenset({Mode.READ}),
    Mode.WRITE: frozenset(Mode),
    Mode.INTENT: frozenset({Mode.INTENT, Mode.READ}),
    Mode.CO_WRITE: frozenset({Mode.CO_WRITE}),
}


# -- request lifecycle ---------------------------------------------------------------------
class Phase(StrEnum):
    NEW = "new"
    WAITING = "waiting"
    HELD = "held"
    RELEASED = "released"
    EXPIRED = "expired"
    GONE = "gone"              # holder's pane or session died
    UPGRADED = "upgraded"      # replaced by the same holder's WRITE grant
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    LOST = "lost"              # an upgrade whose base grant ended while it waited
    DEADLOCKED = "deadlocked"  # the victim of a wait-for cycle found across homes


class Ev(StrEnum):
    QUEUE = "queue"
    GRANT = "grant"
    RENEW = "renew"
    RELEASE = "release"
    EXPIRE = "expire"
    GONE = "gone"
    UPGRADE = "upgrade"
    TIMEOUT = "timeout"
    CANCEL = "cancel"
    LOSE = "lose"
    VICTIM = "victim"


TRANSITIONS: dict[Phase, dict[Ev, Phase]] = {
    Phase.NEW: {Ev.QUEUE: Phase.WAITING, Ev.GRANT: Phase.HELD},
    Phase.WAITING: {Ev.GRANT: Phase.HELD, Ev.TIMEOUT: Phase.TIMED_OUT, Ev.CANCEL: Phase.CANCELLED,
                    Ev.GONE: Phase.GONE, Ev.LOSE: Phase.LOST, Ev.VICTIM: Phase.DEADLOCKED},
    Phase.HELD: {Ev.RENEW: Phase.HELD, Ev.RELEASE: Phase.RELEASED, Ev.EXPIRE: Phase.EXPIRED,
                 Ev.GONE: Phase.GONE, Ev.UPGRADE: Phase.UPGRADED},
}


class IllegalMove(RuntimeError):
    """A lifecycle move the transition table does not allow: a bug in the table."""


def step(phase: Phase, ev: Ev) -> Phase:
    nxt = TRANSITIONS.get(phase, {}).get(ev)
    if nxt is None:
        raise IllegalMove(f"{ev} is not allowed in phase {phase}")
    return nxt


# -- records -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Grant:
    token: int
    target: str
    mode: Mode
    holder: str
    ttl_s: float
    expires_at: float          # home monotonic seconds; valid while now < expires_at
    request_id: str
    key: Key = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", key_of(self.target))


@dataclass(frozen=True)
class Waiter:
    request_id: str
    target: str
    mode: Mode
    holder: str
    ttl_s: float
    seq: int
    since: float
    deadline: float | None     # gives up at this time (None: waits until cancelled)
    upgrade_of: int | None     # token of the holder's grant this request upgrades
    key: Key = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", key_of(self.target))


@dataclass(frozen=True)
class LockDelay:
    """What an expired grant leaves behind: it still conflicts, but its token is dead."""

    token: int
    target: str
    mode: Mode
    holder: str
    until: float
    key: Key = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", key_of(self.target))


class SavedGrant(NamedTuple):
    token: int
    target: str
    mode: Mode
    holder: str
    ttl_s: float
    request_id: str


class SavedDelay(NamedTuple):
    token: int
    target: str
    mode: Mode
    holder: str


# -- results -------------------------------------------------------------------------------
class How(StrEnum):
    NEW = "new"        # granted by this call (or, for a waiter, when its turn came)
    RETRY = "retry"    # the same request_id was granted before
    HELD = "held"      # the holder already held a covering mode on this target


@dataclass(frozen=True)
class Granted:
    grant: Grant
    how: How = How.NEW

    @property
    def token(self) -> int:
        return self.grant.token

    @property
    def expires_at(self) -> float:
        return self.grant.expires_at


@dataclass(frozen=True)
class Queued:
    request_id: str
    position: int                   # 1 + earlier waiters it queues behind
    blockers: tuple[str, ...]       # holders it waits for


@dataclass(frozen=True)
class Conflict:
    holders: tuple[str, ...]        # holders of conflicting grants
    waiting: tuple[str, ...]        # holders of earlier waiters it would queue behind
    reason: str
    retry_at: float | None = None   # end of a lock-delay, when that is what stands in the way


@dataclass(frozen=True)
class Deadlock:
    cycle: tuple[str, ...]          # requester first; each waits on the next, the last on the first


@dataclass(frozen=True)
class Rejected:
    reason: str


@dataclass(frozen=True)
class Released:
    grant: Grant


@dataclass(frozen=True)
class Renewed:
    grant: Grant


@dataclass(frozen=True)
class Cancelled:
    request_id: str
    granted: Grant | None           # the request had been granted before the cancel came


@dataclass(frozen=True)
class Check:
    valid: bool
    reason: str
    grant: Grant | None = None


AcquireResult = Granted | Queued | Conflict | Deadlock | Rejected


# -- effects -------------------------------------------------------------------------------
@dataclass(frozen=True)
class GrantStarted:
    grant: Grant
    waited: bool                    # a queued request whose turn came
    replaces: Grant | None = None   # the grant an upgrade replaced


@dataclass(frozen=True)
class GrantEnded:
    grant: Grant
    cause: Phase                    # RELEASED, EXPIRED, GONE or UPGRADED
    delay: LockDelay | None = None  # the lock-delay an expiry started


@dataclass(frozen=True)
class DelayEnded:
    delay: LockDelay


@dataclass(frozen=True)
class WaitEnded:
    waiter: Waiter
    cause: Phase                    # TIMED_OUT, CANCELLED, GONE, LOST or DEADLOCKED
    blocked: Blocked | None = None  # for TIMED_OUT: what it was still waiting for
    cycle: tuple[str, ...] = ()     # for DEADLOCKED: the cycle, the victim first


Effect = GrantStarted | GrantEnded | DelayEnded | WaitEnded


@dataclass(frozen=True)
class Blocked:
    """What keeps a request from being granted now."""

    grants: tuple[Grant, ...] = ()       # other holders' conflicting grants
    delays: tuple[LockDelay, ...] = ()   # running lock-delays that conflict
    ahead: tuple[Waiter, ...] = ()       # earlier waiters it queues behind

    @property
    def free(self) -> bool:
        return not (self.grants or self.delays or self.ahead)

    def blockers(self) -> tuple[str, ...]:
        return tuple(sorted({g.holder for g in self.grants} | {w.holder for w in self.ahead}))


class LockTable:
    """All locks one home decides.  Not thread-safe: the service serialises calls."""

    def __init__(self, *, lock_delay_s: float = DEFAULT_LOCK_DELAY_S, fence: int = 0) -> None:
        if lock_delay_s < 0 or not math.isfinite(lock_delay_s):
            raise ValueError("lock_delay_s must be >= 0")
        self.lock_delay_s = lock_delay_s
        self._fence = fence                              # last token issued
        self._seq = 0
        self._now = -math.inf
        self._grants: dict[int, Grant] = {}              # token -> grant
        self._held: dict[tuple[str, Key], int] = {}      # (holder, key) -> token
        self._by_rid: dict[str, int] = {}                # request id -> token while held
        self._waiters: dict[str, Waiter] = {}            # request id -> waiter, in queue order
        self._waiting: dict[str, str] = {}               # holder -> request id of its one wait
        self._delays: dict[int, LockDelay] = {}          # token of the expired grant -> delay
        self._phase: dict[str, Phase] = {}               # request id -> phase, live ones only

    @classmethod
    def restore(cls, grants: Iterable[SavedGrant], delays: Iterable[SavedDelay], *, fence: int,
                now: float, lock_delay_s: float = DEFAULT_LOCK_DELAY_S) -> LockTable:
        """A table after a restart: the old clock means nothing now, so every surviving grant
        gets a full lease from ``now`` and every surviving lock-delay a full delay."""
        grants, delays = list(grants), list(delays)
        top = max([fence, *(g.token for g in grants), *(d.token for d in delays)])
        table = cls(lock_delay_s=lock_delay_s, fence=top)
        table._advance(now)
        for s in grants:
            g = Grant(s.token, normalize(s.target), Mode(s.mode), s.holder, s.ttl_s, now + s.ttl_s,
                      s.request_id)
            table._put(g)
            table._phase[g.request_id] = Phase.HELD
        for d in delays:
            table._delays[d.token] = LockDelay(d.token, normalize(d.target), Mode(d.mode), d.holder,
                                               now + lock_delay_s)
        return table

    # -- reads -----------------------------------------------------------------------------
    @property
    def fence(self) -> int:
        """The last token issued; the next grant gets a larger one."""
        return self._fence

    def grants(self) -> list[Grant]:
        return sorted(self._grants.values(), key=lambda g: g.token)

    def waiters(self) -> list[Waiter]:
        return list(self._waiters.values())

    def delays(self) -> list[LockDelay]:
        return sorted(self._delays.values(), key=lambda d: d.token)

    def holders(self) -> set[str]:
        return {g.holder for g in self._grants.values()} | set(self._waiting)

    def blocked(self) -> list[tuple[Waiter, Blocked]]:
        """Each waiter, in queue order, with what it waits for."""
        _, blocks, _ = self._walk(self._now, grant=False)
        return [(w, blocks[w.request_id]) for w in self._waiters.values()]

    def wait_edges(self) -> dict[str, set[str]]:
        """The wait-for graph of this home: holder -> holders its wait depends on."""
        return self._walk(self._now, grant=False)[2]

    def next_deadline(self) -> float | None:
        """The next time at which :meth:`expire` would change something."""
        times = [g.expires_at for g in self._grants.values()]
        times += [d.until for d in self._delays.values()]
        times += [w.deadline for w in self._waiters.values() if w.deadline is not None]
        return min(times, default=None)

    def check(self, target: str, token: int, now: float) -> Check:
        """Is ``token`` the live grant of a lock covering ``target``?  Read-only."""
        key = key_of(target)
        g = self._grants.get(token)
        if g is None:
            return Check(False, self._why_not(token))
        if now >= g.expires_at:
            return Check(False, f"token {token}: the lease ran out", g)
        if not covers(g.key, key):
            return Check(False, f"token {token} is for {g.target}, which does not cover {target}", g)
        return Check(True, "valid", g)

    # -- operations ------------------------------------------------------------------------
    def acquire(self, target: str, mode: Mode | str, holder: str, ttl_s: float, request_id: str,
                now: float, wait: bool = False, *, wait_until: float | None = None,
                extra_edges: Adjacency | None = None) -> tuple[AcquireResult, list[Effect]]:
        """Grant, queue (``wait``), or refuse.  ``extra_edges`` are other homes' wait-for edges,
        for a mesh-wide cycle check; ``wait_until`` is when a queued request gives up."""
        target, mode = normalize(target), Mode(mode)
        if not holder or not request_id:
            raise ValueError("holder and request_id must not be empty")
        if not (ttl_s > 0 and math.isfinite(ttl_s)):
            raise ValueError(f"ttl_s must be a positive number of seconds, not {ttl_s!r}")
        effects = self.expire(now)
        if request_id in self._phase:
            return self._retry(request_id, target, mode, holder), effects
        upgrade_of = None
        own = self._held.get((holder, key_of(target)))
        if own is not None:
            g = self._grants[own]
            if mode in COVERS[g.mode]:
                return Granted(g, How.HELD), effects
            if not may_upgrade(g.mode, mode):
                return Rejected(f"{holder} holds {g.mode} on {target}; release it before "
                                f"asking for {mode}"), effects
            upgrade_of = own
        busy = self._waiting.get(holder)
        if busy is not None:
            return Rejected(f"{holder} already waits for {self._waiters[busy].target} (request "
                            f"{busy}); a holder waits for one lock at a time"), effects
        self._seq += 1
        req = Waiter(request_id, target, mode, holder, ttl_s, self._seq, now,
                     wait_until if wait else None, upgrade_of)
        _, blocks, edges = self._walk(now, grant=False, extra=req)
        b = blocks[request_id]
        if b.free:
            self._phase[request_id] = step(Phase.NEW, Ev.GRANT)
            effects += self._issue(req, now, waited=False)
            return Granted(self._grants[self._fence]), effects
        if not wait or (wait_until is not None and wait_until <= now):
            return self.explain(b, now), effects
        adj: dict[str, set[str]] = {k: set(v) for k, v in edges.items()}
        for k, v in (extra_edges or {}).items():
            adj.setdefault(k, set()).update(v)
        cycle = find_cycle(adj, holder, b.blockers())
        if cycle is not None:
            return Deadlock(tuple(cycle)), effects
        self._waiters[request_id] = req
        self._waiting[holder] = request_id
        self._phase[request_id] = step(Phase.NEW, Ev.QUEUE)
        return Queued(request_id, len(b.ahead) + 1, b.blockers()), effects

    def release(self, target: str, holder: str, token: int | None, now: float
                ) -> tuple[Released | Rejected, list[Effect]]:
        """The holder gives the lock back (``token`` None: its grant on exactly ``target``)."""
        effects = self.expire(now)
        g, why = self._find(target, holder, token)
        if g is None:
            return Rejected(why), effects
        effects += self._end_grant(g, Ev.RELEASE, now)
        effects += self._pump(now)
        return Released(g), effects

    def renew(self, target: str, holder: str, token: int | None, now: float,
              ttl_s: float | None = None) -> tuple[Renewed | Rejected, list[Effect]]:
        """Restart the lease (same token).  A lease that ran out cannot be renewed."""
        effects = self.expire(now)
        g, why = self._find(target, holder, token)
        if g is None:
            return Rejected(why), effects
        return Renewed(self._extend(g, now, ttl_s)), effects

    def renew_holder(self, holder: str, now: float) -> tuple[list[Grant], list[Effect]]:
        """Renew every live grant of ``holder`` (the daemon does this for live panes)."""
        effects = self.expire(now)
        mine = [g for g in self._grants.values() if g.holder == holder]
        return [self._extend(g, now, None) for g in mine], effects

    def expire(self, now: float) -> list[Effect]:
        """End leases that ran out, lock-delays that passed, waits that timed out; grant what
        that frees.  Every other operation starts with this, so results never depend on how
        often the caller ticks."""
        self._advance(now)
        effects: list[Effect] = []
        for g in [g for g in self._grants.values() if now >= g.expires_at]:
            effects += self._end_grant(g, Ev.EXPIRE, now)
        for d in [d for d in self._delays.values() if now >= d.until]:
            del self._delays[d.token]
            effects.append(DelayEnded(d))
        effects += self._pump(now)
        late = [w for w in self._waiters.values() if w.deadline is not None and now >= w.deadline]
        if late:
            blocks = self._walk(now, grant=False)[1]
            for w in late:
                effects += self._end_wait(w, Ev.TIMEOUT, blocks[w.request_id])
        if late:
            effects += self._pump(now)
        return effects

    def holder_gone(self, holder: str, now: float) -> list[Effect]:
        """The holder's pane or session died: drop its wait and its grants, without lock-delay."""
        effects = self.expire(now)
        rid = self._waiting.get(holder)
        if rid is not None:
            effects += self._end_wait(self._waiters[rid], Ev.GONE)
        for g in [g for g in self._grants.values() if g.holder == holder]:
            effects += self._end_grant(g, Ev.GONE, now)
        effects += self._pump(now)
        return effects

    def cancel(self, request_id: str, now: float) -> tuple[Cancelled, list[Effect]]:
        """Stop waiting.  If the request was granted meanwhile, say so (the caller decides)."""
        effects = self.expire(now)
        w = self._waiters.get(request_id)
        if w is not None:
            effects += self._end_wait(w, Ev.CANCEL)
            effects += self._pump(now)
            return Cancelled(request_id, None), effects
        token = self._by_rid.get(request_id)
        return Cancelled(request_id, self._grants[token] if token is not None else None), effects

    def abort_victim(self, holder: str, cycle: tuple[str, ...], now: float) -> list[Effect]:
        """End ``holder``'s wait as the victim of a mesh-wide ``cycle`` (found by a pass over
        the merged wait-for graphs), if it still waits here and still waits on the holder
        that follows it in the cycle; otherwise nothing (no abort for a phantom cycle)."""
        effects = self.expire(now)
        rid = self._waiting.get(holder)
        if rid is None or len(cycle) < 2 or cycle[0] != holder:
            return effects
        if cycle[1] not in self.wait_edges().get(holder, set()):
            return effects
        w = self._waiters[rid]
        del self._waiters[rid]
        del self._waiting[holder]
        effects.append(WaitEnded(w, self._move(rid, Ev.VICTIM), cycle=cycle))
        return effects + self._pump(now)

    # -- internals -------------------------------------------------------------------------
    def _advance(self, now: float) -> None:
        if now < self._now:
            raise ValueError(f"time went backwards ({now} < {self._now}); pass a monotonic clock")
        self._now = now

    def _move(self, request_id: str, ev: Ev) -> Phase:
        phase = step(self._phase[request_id], ev)
        if phase in TRANSITIONS:
            self._phase[request_id] = phase
        else:
            del self._phase[request_id]
        return phase

    def _put(self, g: Grant) -> None:
        self._grants[g.token] = g
        self._held[(g.holder, g.key)] = g.token
        self._by_rid[g.request_id] = g.token

    def _drop(self, g: Grant) -> None:
        del self._grants[g.token]
        del self._held[(g.holder, g.key)]
        del self._by_rid[g.request_id]

    def _extend(self, g: Grant, now: float, ttl_s: float | None) -> Grant:
        ttl = g.ttl_s if ttl_s is None else ttl_s
        if not (ttl > 0 and math.isfinite(ttl)):
            raise ValueError(f"ttl_s must be a positive number of seconds, not {ttl!r}")
        new = replace(g, ttl_s=ttl, expires_at=now + ttl)
        self._grants[g.token] = new
        self._move(g.request_id, Ev.RENEW)
        return new

    def _issue(self, req: Waiter, now: float, *, waited: bool) -> list[Effect]:
        effects: list[Effect] = []
        old = self._grants[req.upgrade_of] if req.upgrade_of is not None else None
        if old is not None:
            self._drop(old)
            effects.append(GrantEnded(old, self._move(old.request_id, Ev.UPGRADE)))
        self._fence += 1
        g = Grant(self._fence, req.target, req.mode, req.holder, req.ttl_s, now + req.ttl_s,
                  req.request_id)
        self._put(g)
        effects.append(GrantStarted(g, waited, old))
        return effects

    def _end_grant(self, g: Grant, ev: Ev, now: float) -> list[Effect]:
        self._drop(g)
        cause = self._move(g.request_id, ev)
        delay = None
        if cause is Phase.EXPIRED and g.expires_at + self.lock_delay_s > now:
            delay = LockDelay(g.token, g.target, g.mode, g.holder, g.expires_at + self.lock_delay_s)
            self._delays[g.token] = delay
        effects: list[Effect] = [GrantEnded(g, cause, delay)]
        rid = self._waiting.get(g.holder)
        if rid is not None and self._waiters[rid].upgrade_of == g.token:
            effects += self._end_wait(self._waiters[rid], Ev.LOSE)
        return effects

    def _end_wait(self, w: Waiter, ev: Ev, blocked: Blocked | None = None) -> list[Effect]:
        del self._waiters[w.request_id]
        del self._waiting[w.holder]
        return [WaitEnded(w, self._move(w.request_id, ev), blocked)]

    def _pump(self, now: float) -> list[Effect]:
        return self._walk(now, grant=True)[0]

    def _walk(self, now: float, *, grant: bool, extra: Waiter | None = None
              ) -> tuple[list[Effect], dict[str, Blocked], dict[str, set[str]]]:
        """Go through the queue in order (``extra`` last), granting what is free if ``grant``.

        One pass is enough: a grant only adds conflicts for later waiters, and an
        earlier waiter's blocks depend only on waiters before it.
        """
        effects: list[Effect] = []
        blocks: dict[str, Blocked] = {}
        edges: dict[str, set[str]] = {}
        earlier: list[Waiter] = []
        queue = [*self._waiters.values(), *([extra] if extra is not None else [])]
        for w in queue:
            b = self._blocked(w, now, earlier, edges)
            if grant and b.free and w is not extra:
                del self._waiters[w.request_id]
                del self._waiting[w.holder]
                self._move(w.request_id, Ev.GRANT)
                effects += self._issue(w, now, waited=True)
                continue
            blocks[w.request_id] = b
            earlier.append(w)
            if b.blockers():
                edges.setdefault(w.holder, set()).update(b.blockers())
        return effects, blocks, edges

    def _blocked(self, w: Waiter, now: float, earlier: list[Waiter],
                 edges: Mapping[str, set[str]]) -> Blocked:
        grants = tuple(g for g in self._grants.values() if g.holder != w.holder
                       and overlaps(g.key, w.key) and not compatible(g.mode, w.mode))
        delays = tuple(d for d in self._delays.values() if d.holder != w.holder and d.until > now
                       and overlaps(d.key, w.key) and not compatible(d.mode, w.mode))
        mine = _reaching(edges, w.holder)
        ahead = tuple(e for e in earlier if e.holder not in mine and overlaps(e.key, w.key))
        return Blocked(grants, delays, ahead)

    def _retry(self, request_id: str, target: str, mode: Mode, holder: str) -> AcquireResult:
        token = self._by_rid.get(request_id)
        if token is not None:
            g = self._grants[token]
            if (g.target, g.mode, g.holder) != (target, mode, holder):
                return Rejected(f"request id {request_id} was used for another request")
            return Granted(g, How.RETRY)
        w = self._waiters[request_id]
        if (w.target, w.mode, w.holder) != (target, mode, holder):
            return Rejected(f"request id {request_id} was used for another request")
        b = self._walk(self._now, grant=False)[1][request_id]
        return Queued(request_id, len(b.ahead) + 1, b.blockers())

    def _find(self, target: str, holder: str, token: int | None) -> tuple[Grant | None, str]:
        key = key_of(target)
        if token is None:
            held = self._held.get((holder, key))
            if held is None:
                return None, f"{holder} holds no lock on {normalize(target)}"
            return self._grants[held], ""
        g = self._grants.get(token)
        if g is None:
            return None, self._why_not(token)
        if g.holder != holder:
            return None, f"token {token} belongs to another holder, not {holder}"
        if g.key != key:
            return None, f"token {token} is for {g.target}, not {normalize(target)}"
        return g, ""

    def _why_not(self, token: int) -> str:
        if token in self._delays:
            return f"token {token}: the lease ran out; the token is no longer valid"
        if token > self._fence or token < 1:
            return f"token {token} was never issued here"
        return f"token {token} is no longer current (released, expired or replaced)"

    def explain(self, b: Blocked, now: float) -> Conflict:
        """A refusal that names what stands in the way."""
        parts = []
        if b.grants:
            parts.append("held by " + ", ".join(f"{g.holder} ({g.mode} on {g.target})"
                                                for g in b.grants))
        if b.ahead:
            parts.append("queued for by " + ", ".join(f"{w.holder} ({w.mode} on {w.target})"
                                                      for w in b.ahead))
        retry_at = None
        if b.delays:
            retry_at = max(d.until for d in b.delays)
            parts.append("in lock-delay after the lease of " + ", ".join(
                sorted({d.holder for d in b.delays})) + f" ran out (free for others in "
                f"{retry_at - now:.1f} s)")
        return Conflict(tuple(sorted({g.holder for g in b.grants})),
                        tuple(sorted({w.holder for w in b.ahead})), "; ".join(parts), retry_at)


def _reaching(edges: Mapping[str, set[str]], holder: str) -> set[str]:
    """Holders that wait, directly or through others, for ``holder`` (and ``holder`` itself)."""
    back: dict[str, set[str]] = {}
    for waiter, holders in edges.items():
        for h in holders:
            back.setdefault(h, set()).add(waiter)
    seen = {holder}
    todo = [holder]
    while todo:
        for w in back.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen
