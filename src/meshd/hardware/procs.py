"""Process trees of panes, read with psutil (its one home in meshd).

One pass over the process table per scan; each pane gets its pane process
followed by its descendants, breadth-first, as :class:`~meshd.registry.detect.Proc`.
Processes that vanish mid-read are skipped, never raised.
"""

from __future__ import annotations

from collections import deque

import psutil

from meshd.registry.detect import Proc


def process_table() -> dict[int, tuple[int, Proc]]:
    """pid -> (ppid, Proc) for every process we can see."""
    table: dict[int, tuple[int, Proc]] = {}
    for p in psutil.process_iter(["pid", "ppid", "name", "cmdline"]):
        info = p.info
        argv = tuple(info.get("cmdline") or ())
        table[info["pid"]] = (info.get("ppid") or 0,
                              Proc(info["pid"], info.get("name") or "", argv))
    return table


def trees(roots: list[int], table: dict[int, tuple[int, Proc]] | None = None) -> dict[int, list[Proc]]:
    """For each root pid, [root, descendants...] breadth-first; [] for a vanished root."""
    table = process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[int, list[Proc]] = {}
    for root in roots:
        chain: list[Proc] = []
        queue = deque([root])
        while queue:
            pid = queue.popleft()
            if pid in table:
                chain.append(table[pid][1])
                queue.extend(sorted(children.get(pid, ())))
        out[root] = chain
    return out


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total
