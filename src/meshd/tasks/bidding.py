"""Who may bid for a task, and who wins.  Pure.

**Eligibility** (:func:`refusal` returns why an agent may not bid, or None):

* the pane can take a prompt now: ``idle``, or ``unknown`` for a tool that is not an
  agent CLI (the delivery policy sends to those too); ``busy``, ``typing``, ``dialog``
  never bid;
* the agent works on no other task (as worker or reviewer);
* ``--to``: only that agent; otherwise ``--role`` and ``--tool`` must match when given,
  and a bare shell (tool ``shell``) bids only when asked for by ``--to`` or
  ``--tool shell`` -- a task typed at a person's prompt arrives as comments;
* windows meshd opened for headless runs (session :data:`EXEC_SESSION`) never bid;
* the host has the resources the task needs free (``--needs gpu=GB,ram=GB``);
* for a review, the worker itself is excluded.

**Winner** (:func:`winner`), the same on every host for the same bids and board: an
agent holds one task at a time, so bids of agents that took another task since they bid
(or that this decision round already picked) are dropped; of the rest, the lowest
``(tasks given so far, registration order, address)`` wins -- equal agents take turns,
then the earliest registered, then the address as the total tie-break.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Agent CLIs (as meshd.delivery.service.AGENT_TOOLS): an UNKNOWN screen of theirs is refused.
AGENT_TOOLS = frozenset({"claude", "codex", "gemini", "aider", "cursor-agent"})
EXEC_SESSION = "meshd-exec"
SPAWN_SESSION = "meshd-agents"


@dataclass(frozen=True)
class Bid:
    """One agent offered for a task by its host."""

    agent: str                     # agent id
    address: str
    host: str
    tool: str = ""
    role: str = ""
    since: tuple[int, str, int] = (0, "", 0)   # registry fold position: registration order

    def to_dict(self) -> dict[str, Any]:
        return {"agent": self.agent, "address": self.address, "host": self.host,
                "tool": self.tool, "role": self.role, "since": list(self.since)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Bid:
        s = list(d.get("since") or (0, "", 0))
        since = (int(s[0]), str(s[1]), int(s[2])) if len(s) == 3 else (0, "", 0)
        return cls(str(d.get("agent", "")), str(d.get("address", "")), str(d.get("host", "")),
                   str(d.get("tool", "")), str(d.get("role", "")), since)


@dataclass(frozen=True)
class Want:
    """What a task asks of the agent that takes it."""

    to: str = ""                   # agent id or address; empty: anyone eligible
    role: str = ""
    tool: str = ""
    gpu_gb: float = 0.0
    ram_gb: float = 0.0
    exclude: frozenset[str] = field(default_factory=frozenset)   # agent ids


@dataclass(frozen=True)
class Candidate:
    """An agent as its host sees it when deciding whether to bid."""

    id: str
    address: str
    tool: str
    role: str
    session: str
    pane_state: str                # idle | typing | busy | dialog | unknown | gone
    active_tasks: int = 0


@dataclass(frozen=True)
class Free:
    """Resources free on the bidding host, in GB (after what its running tasks reserved)."""

    gpu_gb: float = 0.0
    ram_gb: float = 0.0


def available(tool: str, pane_state: str) -> bool:
    """Can the pane take a prompt now without forcing (the delivery policy, section 5)?"""
    return pane_state == "idle" or (pane_state == "unknown" and tool not in AGENT_TOOLS)


def refusal(c: Candidate, want: Want, free: Free) -> str | None:
    """Why ``c`` may not bid for a task wanting ``want``; None when it may."""
    if c.session == EXEC_SESSION:
        return "a headless run, not an agent"
    if c.id in want.exclude:
        return "excluded (the worker of the task under review)"
    if want.to:
        if want.to not in (c.id, c.address):
            return f"the task is for {want.to}"
    else:
        if want.role and c.role != want.role:
            return f"role {c.role or '-'} is not {want.role}"
        if want.tool and c.tool != want.tool:
            return f"tool {c.tool} is not {want.tool}"
        if c.tool == "shell" and want.tool != "shell":
            return "a bare shell takes tasks only by --to or --tool shell"
    if c.active_tasks:
        return f"already on {c.active_tasks} task(s)"
    if not available(c.tool, c.pane_state):
        return f"the pane is {c.pane_state}"
    if want.gpu_gb > free.gpu_gb:
        return f"needs {want.gpu_gb:g} GB GPU memory, {free.gpu_gb:g} GB free"
    if want.ram_gb > free.ram_gb:
        return f"needs {want.ram_gb:g} GB RAM, {free.ram_gb:g} GB free"
    return None


def rank(b: Bid, given: Mapping[str, int]) -> tuple[Any, ...]:
    """Sort key of a bid: lower wins (see the module docstring)."""
    return (given.get(b.agent, 0), b.since, b.address, b.agent)


def winner(bids: Iterable[Bid], given: Mapping[str, int], *,
           busy: Collection[str] = (), live: Collection[str] | None = None,
           exclude: Collection[str] = ()) -> Bid | None:
    """The winning bid, or None when no bid is left.

    ``busy``: agents on a task now; ``live``: agents still registered (None: all);
    ``exclude``: agents that may not win (the worker, for its own review).
    """
    pool = [b for b in bids if b.agent not in busy and b.agent not in exclude
            and (live is None or b.agent in live)]
    return min(pool, key=lambda b: rank(b, given), default=None)
