"""The registry as a pure fold over journal events.

Events (bodies are plain JSON):

* ``agent.seen``  -- ``{"agent": <Agent fields>}``: an agent appeared or changed.
* ``agent.gone``  -- ``{"id": ...}``: its pane closed.
* ``host.seen``   -- ``{"host": ..., "generation": N}``: a daemon (re)started.

Each host writes events only about its own agents, so the fold never has to
arbitrate between writers of one agent.  ``fold(events)`` sorts by the
journal order (lamport, origin, seq), so any delivery order of the same set
of events gives the same state: replication can be anti-entropy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from meshd.journal.event import Event, ordered


@dataclass(frozen=True)
class Agent:
    id: str              # "<host>:<tmux server pid>:<%pane>" -- stable for the pane's life
    host: str
    address: str
    session: str
    session_id: str
    window: str
    window_id: str
    pane_id: str
    pane_index: int
    pane_pid: int
    tool: str
    role: str = ""
    scope: str = ""
    cwd: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Agent:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Entry:
    """An agent in the registry, with what the fold learned about its history."""

    agent: Agent
    since: tuple[int, str, int]          # fold position of its first sighting
    registered_at: float                 # wall time of that sighting (display only)
    aliases: dict[str, float] = field(default_factory=dict)  # old address -> time retired


@dataclass
class Registry:
    agents: dict[str, Entry] = field(default_factory=dict)
    hosts: dict[str, int] = field(default_factory=dict)  # host -> generation

    def apply(self, e: Event) -> None:
        if e.kind == "agent.seen":
            a = Agent.from_dict(e.body["agent"])
            old = self.agents.get(a.id)
            if old is None:
                self.agents[a.id] = Entry(a, e.sort_key(), e.time)
                return
            if old.agent.address != a.address:
                old.aliases[old.agent.address] = e.time
                old.aliases.pop(a.address, None)
            old.agent = a
        elif e.kind == "agent.gone":
            self.agents.pop(str(e.body.get("id")), None)
        elif e.kind == "host.seen":
            host = str(e.body.get("host", e.origin))
            self.hosts[host] = max(self.hosts.get(host, 0), int(e.body.get("generation", 0)))

    def of_host(self, host: str) -> list[Entry]:
        return sorted((x for x in self.agents.values() if x.agent.host == host),
                      key=lambda x: x.agent.address)

    def listing(self) -> list[Entry]:
        """All agents in registration order (the first is the architect-to-be)."""
        return sorted(self.agents.values(), key=lambda x: x.since)

    def resolve(self, address: str, now: float, alias_ttl_s: float) -> Entry | None:
        """The agent an address names: current address first, then a live alias."""
        for x in self.agents.values():
            if x.agent.address == address:
                return x
        best: Entry | None = None
        for x in self.agents.values():
            retired = x.aliases.get(address)
            if retired is not None and now - retired <= alias_ttl_s and (
                    best is None or retired > best.aliases[address]):
                best = x
        return best


def fold(events: Iterable[Event]) -> Registry:
    reg = Registry()
    for e in ordered(list(events)):
        reg.apply(e)
    return reg


def changes(known: dict[str, Agent], seen: list[Agent]) -> list[tuple[str, dict[str, Any]]]:
    """Events that turn this host's ``known`` agents into the ``seen`` ones."""
    out: list[tuple[str, dict[str, Any]]] = []
    now_ids = {a.id for a in seen}
    for a in seen:
        if known.get(a.id) != a:
            out.append(("agent.seen", {"agent": a.to_dict()}))
    for aid, a in known.items():
        if aid not in now_ids:
            out.append(("agent.gone", {"id": aid, "address": a.address}))
    return out
