"""Journal events and their order.  Pure: no I/O, no clocks.

An event is ``(origin, seq, lamport, time, kind, body)``.  ``origin`` is the
host that wrote it, ``seq`` counts that host's events from 1 without gaps, so
``(origin, seq)`` names an event mesh-wide and lets peers compare version
vectors.  ``lamport`` orders events causally; ``time`` (wall clock, seconds
since the epoch) is for people only and never decides anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, order=False)
class Event:
    origin: str
    seq: int
    lamport: int
    time: float
    kind: str
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int]:
        return (self.origin, self.seq)

    def sort_key(self) -> tuple[int, str, int]:
        """The fold order every host uses: lamport, then origin, then seq."""
        return (self.lamport, self.origin, self.seq)

    def to_dict(self) -> dict[str, Any]:
        return {"origin": self.origin, "seq": self.seq, "lamport": self.lamport,
                "time": self.time, "kind": self.kind, "body": self.body}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        body = d.get("body", {})
        if not isinstance(body, dict):
            raise ValueError("event body must be an object")
        return cls(origin=str(d["origin"]), seq=int(d["seq"]), lamport=int(d["lamport"]),
                   time=float(d["time"]), kind=str(d["kind"]), body=body)


def ordered(events: list[Event] | set[Event] | tuple[Event, ...]) -> list[Event]:
    return sorted(events, key=Event.sort_key)


def version_vector(events: list[Event]) -> dict[str, int]:
    """Highest contiguous seq per origin -- what a peer needs to ask for the rest."""
    seen: dict[str, set[int]] = {}
    for e in events:
        seen.setdefault(e.origin, set()).add(e.seq)
    vv: dict[str, int] = {}
    for origin, seqs in seen.items():
        n = 0
        while n + 1 in seqs:
            n += 1
        vv[origin] = n
    return vv
