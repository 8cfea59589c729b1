"""Turn one tmux scan into this host's agents.  Blocking; run in a thread.

Used by the daemon (on start, on hooks, on resync) and by ``notify-pane``
when the daemon is down, so both name panes the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshd.hardware.procs import trees
from meshd.registry.address import PaneName, assign
from meshd.registry.detect import detect
from meshd.registry.fold import Agent
from meshd.tmux.runner import Tmux
from meshd.tmux.scan import PaneRow, scan


@dataclass(frozen=True)
class Discovered:
    agents: list[Agent]
    rows: dict[str, PaneRow]   # pane id -> row


def discover(tmux: Tmux, host: str) -> Discovered:
    rows = [r for r in scan(tmux) if not r.dead]
    addresses = assign(host, (PaneName(r.pane_id, r.session, r.window, r.window_id,
                                       r.pane_index, r.window_panes) for r in rows))
    chains = trees([r.pane_pid for r in rows])
    agents = [
        Agent(id=f"{host}:{r.server_pid}:{r.pane_id}", host=host, address=addresses[r.pane_id],
              session=r.session, session_id=r.session_id, window=r.window,
              window_id=r.window_id, pane_id=r.pane_id, pane_index=r.pane_index,
              pane_pid=r.pane_pid, tool=detect(chains.get(r.pane_pid, [])), role=r.role,
              scope=r.scope, cwd=r.cwd)
        for r in rows
    ]
    return Discovered(agents, {r.pane_id: r for r in rows})
