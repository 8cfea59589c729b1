"""agent-mesh compatible addresses.  Pure.

An agent is a tmux window; its address is ``<host>-<session>-<window>`` with
each part slugged (lowercase, ``[a-z0-9-]``).  When a window holds several
panes, each pane's address gets ``-<pane_index>``.  Identity is never the
address: it is tmux's ``%pane`` id, so renaming keeps the agent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_NON_SLUG = re.compile(r"[^a-z0-9]+")


def slug(text: str) -> str:
    """``My Proj_2`` -> ``my-proj-2``; empty or symbol-only input -> ``x``."""
    s = _NON_SLUG.sub("-", text.lower()).strip("-")
    return s or "x"


@dataclass(frozen=True)
class PaneName:
    """What addressing needs to know about one pane."""

    pane_id: str
    session: str
    window: str
    window_id: str
    pane_index: int
    window_panes: int


def address_of(host: str, p: PaneName) -> str:
    base = f"{slug(host)}-{slug(p.session)}-{slug(p.window)}"
    return f"{base}-{p.pane_index}" if p.window_panes > 1 else base


def assign(host: str, panes: Iterable[PaneName]) -> dict[str, str]:
    """Addresses for all panes of one host, keyed by pane id.

    Two windows can slug to the same address (``a b`` and ``a-b``).  The pane
    with the lower tmux id keeps the plain address; others get a ``-p<id>``
    suffix, so every address names exactly one pane.
    """
    out: dict[str, str] = {}
    taken: set[str] = set()
    for p in sorted(panes, key=lambda p: _id_num(p.pane_id)):
        addr = address_of(host, p)
        if addr in taken:
            addr = f"{addr}-p{_id_num(p.pane_id)}"
        taken.add(addr)
        out[p.pane_id] = addr
    return out


def _id_num(tmux_id: str) -> int:
    digits = tmux_id.lstrip("%@$")
    return int(digits) if digits.isdigit() else 0
