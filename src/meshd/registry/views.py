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


def render(reg: Registry, *, only_host: str | None, now: float,
           reachable: set[str] | None = None, last_seen: dict[str, float] | None = None,
           architect: str | None = None) -> dict[str, Any]:
    """The TOML view.  Agents of hosts not in ``reachable`` are kept, marked unreachable."""
    entries = reg.of_host(only_host) if only_host else reg.listing()
    agents = {}
    for x in entries:
        d = entry_dict(x, x.agent.id == architect)
        if reachable is not None and x.agent.host not in reachable:
            d["reachable"] = False
            seen = (last_seen or {}).get(x.agent.host)
            if seen:
                d["last_seen"] = iso(seen)
        agents[x.agent.address] = d
    return {"meta": {"written_by": "meshd", "updated": iso(now),
                     "hosts": sorted(reg.hosts)}, "agents": agents}
