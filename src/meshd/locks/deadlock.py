"""Wait-for graphs and deadlock detection.  Pure.

Nodes are holders (agent addresses, ``shell:user@host:pid``).  An edge
``W -> H`` means a waiting request of ``W`` cannot be granted before ``H``
gives something up: ``H`` holds a conflicting lock, or ``H`` waits ahead of
``W`` in a FIFO queue.  A holder has at most one waiting request at a time
(the lock table enforces it), so a cycle among holders is a real deadlock,
never an artefact of one holder waiting in two places.

Detection happens when a request is about to wait: :func:`find_cycle` asks
whether the new edges ``requester -> blockers`` close a cycle.  If they do,
the requester -- and only the requester -- is refused, so every cycle costs
exactly one victim and the graph stays acyclic.

Across several homes each home owns the edges of the requests it queues.
:class:`WaitForGraph` keeps the edges per home with a version, and
:meth:`WaitForGraph.merge` keeps the newest version per home: merging is
commutative, associative and idempotent, so homes can gossip their parts in
any order.  :func:`find_any_cycle` and :func:`pick_victim` serve a mesh-wide
pass over a merged graph, where a cycle can appear without one request
closing it on one home.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

Edge = tuple[str, str]                  # (waiting holder, holder it waits on)
Adjacency = Mapping[str, Iterable[str]]


def adjacency(edges: Iterable[Edge]) -> dict[str, set[str]]:
    """Edges as ``{waiter: {holders it waits on}}``; self-edges are dropped."""
    out: dict[str, set[str]] = {}
    for waiter, holder in edges:
        if waiter != holder:
            out.setdefault(waiter, set()).add(holder)
    return out


def find_cycle(adj: Adjacency, requester: str, blockers: Iterable[str]) -> list[str] | None:
    """The cycle that ``requester`` waiting on ``blockers`` would close, or None.

    Returned as holders in wait order, starting with the requester:
    ``[requester, b1, ..., bk]`` means requester waits on b1, ..., bk waits on
    the requester.  The shortest such cycle is returned (breadth-first, ties
    broken by name), so the answer is deterministic.
    """
    starts = sorted({b for b in blockers if b != requester})
    parent: dict[str, str | None] = {b: None for b in starts}
    queue = deque(starts)
    while queue:
        node = queue.popleft()
        for nxt in sorted(adj.get(node, ())):
            if nxt == requester:
                path = [node]
                while (up := parent[path[-1]]) is not None:
                    path.append(up)
                return [requester, *reversed(path)]
            if nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    return None


def find_any_cycle(adj: Adjacency) -> list[str] | None:
    """Some cycle of ``adj`` (the one through the smallest node that has one), or None."""
    for node in sorted(adj):
        cycle = find_cycle(adj, node, adj.get(node, ()))
        if cycle is not None:
            return cycle
    return None


def pick_victim(cycle: list[str], age: Callable[[str], float]) -> str:
    """The one holder of a mesh-wide cycle to refuse: the youngest waiter (largest ``age`` key,
    i.e. the latest wait start), ties broken by name, so every home picks the same one."""
    return max(cycle, key=lambda h: (age(h), h))


def break_cycles(adj: Adjacency, age: Callable[[str], float]) -> list[tuple[tuple[str, ...], str]]:
    """Every victim a mesh-wide pass must refuse, as ``(cycle, victim)`` with the cycle
    rotated to start at the victim.  One victim per cycle: the victim's wait edges are
    taken out before the next cycle is looked for, so no cycle costs two victims."""
    work = {k: set(v) for k, v in adj.items()}
    out: list[tuple[tuple[str, ...], str]] = []
    while (cycle := find_any_cycle(work)) is not None:
        victim = pick_victim(cycle, age)
        i = cycle.index(victim)
        out.append((tuple(cycle[i:] + cycle[:i]), victim))
        work.pop(victim, None)
    return out


@dataclass(frozen=True)
class HomeEdges:
    """The wait-for edges one home knows of, as of its ``version`` (it only grows), and when
    each of its waiters started waiting (wall time; only used to choose a victim)."""

    version: int
    edges: frozenset[Edge] = frozenset()
    since: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class WaitForGraph:
    """Edges per home; a plain value, merged by keeping each home's newest version."""

    homes: Mapping[str, HomeEdges] = field(default_factory=dict)

    @classmethod
    def of_home(cls, home: str, version: int, edges: Iterable[Edge],
                since: Mapping[str, float] | None = None) -> WaitForGraph:
        return cls({home: HomeEdges(version, frozenset(edges), tuple(sorted((since or {}).items())))})

    def merge(self, other: WaitForGraph) -> WaitForGraph:
        merged = dict(self.homes)
        for home, part in other.homes.items():
            mine = merged.get(home)
            if mine is None or _newer(part, mine):
                merged[home] = part
        return WaitForGraph(merged)

    def edges(self) -> frozenset[Edge]:
        return frozenset(e for part in self.homes.values() for e in part.edges)

    def adjacency(self) -> dict[str, set[str]]:
        return adjacency(self.edges())

    def only(self, homes: Iterable[str]) -> WaitForGraph:
        keep = set(homes)
        return WaitForGraph({h: p for h, p in self.homes.items() if h in keep})

    def homes_of(self, cycle: tuple[str, ...]) -> set[str]:
        """The homes holding at least one edge of ``cycle``."""
        ring = set(zip(cycle, cycle[1:] + cycle[:1], strict=True))
        return {h for h, p in self.homes.items() if ring & p.edges}

    def wait_started(self, holder: str) -> float:
        """The latest start of ``holder``'s waits on any home (0 if unknown)."""
        return max((t for p in self.homes.values() for h, t in p.since if h == holder), default=0.0)

    def victims(self) -> list[tuple[tuple[str, ...], str]]:
        return break_cycles(self.adjacency(), self.wait_started)


def _newer(a: HomeEdges, b: HomeEdges) -> bool:
    # Same version from one home is the same part; the edge order only settles
    # a tie from a buggy sender, so merge stays commutative even then.
    return (a.version, sorted(a.edges)) > (b.version, sorted(b.edges))
