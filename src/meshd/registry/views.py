"""``local.toml`` and ``registry.toml``: the registry for people and the degraded path.

Rendered from the fold; written atomically by the daemon after each change.
Agents of hosts we cannot reach stay listed, marked with their last-seen time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from meshd.registry.fold import Entry, Registry


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def entry_dict(x: Entry, architect: bool = False) -> dict[str, Any]:
    a = x.agent
    d: dict[str, Any] = {
        "address": a.address, "id": a.id, "host": a.host, "session": a.session,
        "window": a.window, "pane": a.pane_id, "pane_index": a.pane_index,
        "tool": a.tool, "role": a.role, "scope": a.scope, "cwd": a.cwd,
        "registered": iso(x.registered_at), "architect": architect,
    }
    if x.aliases:
        d["aliases"] = sorted(x.aliases)
    return d


def render(reg: Registry, *, only_host: str | None, now: float) -> dict[str, Any]:
    entries = reg.of_host(only_host) if only_host else reg.listing()
    first = reg.listing()[0].agent.id if reg.agents else None
    agents = {x.agent.address: entry_dict(x, x.agent.id == first) for x in entries}
    return {"meta": {"written_by": "meshd", "updated": iso(now),
                     "hosts": sorted(reg.hosts)}, "agents": agents}
