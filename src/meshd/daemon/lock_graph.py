"""The mesh-wide deadlock pass: wait-for graphs of all homes, merged, checked for cycles.

Each home decides its own keys, so it sees only the waits queued on it.  A cycle
across homes (A waits on a's key held by B, B waits on b's key held by A) closes
without any one home seeing it.  A request is checked at once only against its own
home's edges (those are exact); other homes' edges known here may be stale, and a refusal
on them could abort for a phantom cycle.  So cross-home cycles are left to the pass:

* every home pushes its part to its linked peers whenever one of its waits starts or
  ends (and every ``PUSH_EVERY_S``), keeps theirs, and looks for cycles in the merged
  graph.  Each cycle gets one victim, the youngest waiter
  (:func:`meshd.locks.deadlock.pick_victim`, the same on every home) -- usually the
  request that closed it, as on one home.  Only the home where the victim waits acts,
  and only after confirming: it fetches the current parts of every home holding an
  edge of the cycle, and refuses the victim's wait only if the cycle is still there
  and the victim still chosen.  A cycle whose edge went away just before (a phantom)
  is left alone.

Parts travel in the ``lock_waits`` peer op (push-pull: the caller's part in, the
callee's part out).  A part from a host whose link is down is dropped: its edges
cannot be confirmed, and a partition cannot deadlock across itself anyway because
requests to an unreachable home fail at once.

Detection time: one link round trip to publish, one to confirm, plus the wake-up
(immediate on a change, else ``REFRESH_S``) -- well inside RELIABILITY L8's
1 s + 2 x T_ae.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol

from meshd.errors import MeshError, StateError, UsageError
from meshd.locks.deadlock import HomeEdges, WaitForGraph
from meshd.locks.service import LockService

log = logging.getLogger(__name__)

REFRESH_S = 1.0       # the pass runs at least this often
PUSH_EVERY_S = 5.0    # an unchanged part is pushed again this often (a peer may have restarted)


class GraphDaemon(Protocol):
    host: str
    locks: LockService | None
    mesh_waits: MeshWaits

    async def record(self, kind: str, body: dict[str, Any]) -> object: ...


class MeshWaits:
    """The other homes' parts, as last received over direct links."""

    def __init__(self) -> None:
        self.graph = WaitForGraph()
        self.changed = asyncio.Event()

    def put(self, home: str, part: HomeEdges) -> None:
        before = self.graph.homes.get(home)
        self.graph = self.graph.merge(WaitForGraph({home: part}))
        if self.graph.homes.get(home) != before:
            self.changed.set()

    def keep_only(self, homes: set[str]) -> None:
        self.graph = self.graph.only(homes)


def encode(home: str, part: HomeEdges) -> dict[str, Any]:
    return {"home": home, "version": part.version, "edges": sorted([w, h] for w, h in part.edges),
            "since": [[h, t] for h, t in part.since]}


def decode(body: Any) -> tuple[str, HomeEdges]:
    """A part from the wire; a malformed one is a UsageError (the link stays up)."""
    try:
        home = str(body["home"])
        version = int(body["version"])
        edges = frozenset((str(w), str(h)) for w, h in body.get("edges") or [])
        since = tuple(sorted((str(h), float(t)) for h, t in body.get("since") or []))
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"malformed wait-for part: {exc}") from None
    if not home or len(edges) > 100_000:
        raise UsageError("malformed wait-for part: no home, or too many edges")
    return home, HomeEdges(version, edges, since)


def my_part(daemon: GraphDaemon) -> tuple[str, HomeEdges]:
    svc = daemon.locks
    if svc is None:
        return daemon.host, HomeEdges(time.time_ns())
    g = svc.wait_for_graph()
    return daemon.host, g.homes[svc.home]


def waits_of(daemon: GraphDaemon) -> MeshWaits:
    return daemon.mesh_waits


async def peer_lock_waits(daemon: GraphDaemon, args: dict[str, Any], from_host: str) -> dict[str, Any]:
    """Peer op ``lock_waits``: keep the caller's part (if sent), answer with ours."""
    if args.get("part") is not None:
        home, part = decode(args["part"])
        if home != from_host:
            raise UsageError(f"host {from_host} sent the wait-for part of {home}")
        waits_of(daemon).put(home, part)
    home, mine = await asyncio.to_thread(my_part, daemon)
    return encode(home, mine)


async def run(daemon: GraphDaemon) -> None:
    """Publish this home's waits, collect the others', and break mesh-wide cycles."""
    svc = daemon.locks
    if svc is None:
        return
    mw = waits_of(daemon)
    loop = asyncio.get_running_loop()

    def wake() -> None:
        loop.call_soon_threadsafe(mw.changed.set)
    svc.on_wait_change = wake
    pushed: frozenset[tuple[str, str]] | None = None
    pushed_at = 0.0
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(mw.changed.wait(), REFRESH_S)
        mw.changed.clear()
        try:
            home, mine = await asyncio.to_thread(my_part, daemon)
            up = _hosts_up(daemon)
            mw.keep_only(up)
            if up and (mine.edges != pushed or time.monotonic() - pushed_at > PUSH_EVERY_S):
                await _exchange(daemon, up, encode(home, mine))
                pushed, pushed_at = mine.edges, time.monotonic()
            await _break(daemon, home, mine)
        except StateError:
            raise
        except MeshError as exc:
            log.warning("deadlock pass: %s", exc)


async def _break(daemon: GraphDaemon, home: str, mine: HomeEdges) -> None:
    mw = waits_of(daemon)
    merged = mw.graph.merge(WaitForGraph({home: mine}))
    for cycle, victim in merged.victims():
        if not any(w == victim for w, _ in mine.edges):
            continue      # the victim waits on another home; that home acts
        involved = merged.homes_of(cycle) - {home}
        fresh = await _exchange(daemon, involved, encode(home, mine)) if involved else {}
        if len(fresh) < len(involved):
            continue      # a part could not be confirmed: try again on the next pass
        home2, mine2 = await asyncio.to_thread(my_part, daemon)
        current = mw.graph.merge(WaitForGraph({home2: mine2}))   # _exchange stored the fresh parts
        again = [c for c, v in current.victims() if v == victim and set(c) == set(cycle)]
        if not again:
            continue      # a phantom: an edge went away before the victim was chosen
        await _abort(daemon, victim, again[0])


async def _abort(daemon: GraphDaemon, victim: str, cycle: tuple[str, ...]) -> None:
    svc = daemon.locks
    if svc is None:
        return
    out = await asyncio.to_thread(svc.abort_victim, victim, cycle)
    for kind, body in out.events:
        await daemon.record(kind, body)
    if out.result:
        log.info("deadlock across homes: %s; refused %s", " -> ".join([*cycle, cycle[0]]), victim)
        await daemon.record("lock.deadlock", {"home": daemon.host, "victim": victim,
                                              "cycle": list(cycle)})


async def _exchange(daemon: GraphDaemon, hosts: set[str], part: dict[str, Any]) -> dict[str, HomeEdges]:
    """Push our part to ``hosts`` and keep what they answer; returns the parts received."""
    peers = getattr(daemon, "peers", None)
    if peers is None or not hosts:
        return {}
    mw = waits_of(daemon)

    async def one(host: str) -> tuple[str, HomeEdges] | None:
        try:
            body = await peers.call(host, "lock_waits", {"part": part})
            home, got = decode(body)
        except MeshError as exc:
            log.debug("wait-for exchange with %s: %s", host, exc)
            return None
        if home != host:
            return None
        mw.put(home, got)
        return home, got

    got = await asyncio.gather(*(one(h) for h in sorted(hosts)))
    return dict(x for x in got if x is not None)


def _hosts_up(daemon: GraphDaemon) -> set[str]:
    peers = getattr(daemon, "peers", None)
    return set(peers.hosts_up()) - {daemon.host} if peers is not None else set()
