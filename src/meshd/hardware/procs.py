"""Process trees of panes, read with psutil (its one home in meshd).

One pass over the process table per scan; each pane gets its pane process
followed by its descendants, breadth-first, as :class:`~meshd.registry.detect.Proc`.
Processes that vanish mid-read are skipped, never raised.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable

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


def _children(pid: int) -> list[int] | None:
    """Child pids from /proc (Linux with CONFIG_PROC_CHILDREN); None where unavailable."""
    try:
        entries = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    out: list[int] = []
    for tid in entries:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out += [int(x) for x in fh.read().split()]
        except FileNotFoundError:
            return None if tid == str(pid) else out
        except OSError:
            continue
    return out


def _proc(pid: int) -> Proc | None:
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            return Proc(pid, p.name(), tuple(p.cmdline()))
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def trees(roots: list[int], table: dict[int, tuple[int, Proc]] | None = None) -> dict[int, list[Proc]]:
    """For each root pid, [root, descendants...] breadth-first; [] for a vanished root.

    Walks only the panes' own subtrees through /proc/<pid>/task/*/children, so a scan
    costs in proportion to the panes' processes, not the whole machine's; falls back to
    one pass over the process table where the kernel lacks that file.
    """
    if table is None and _children(os.getpid()) is not None:
        return _walk(roots, _proc, lambda pid: _children(pid) or [])
    table = process_table() if table is None else table
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    return _walk(roots, lambda pid: table[pid][1] if pid in table else None,
                 lambda pid: kids.get(pid, []))


def _walk(roots: list[int], proc_of: Callable[[int], Proc | None],
          children_of: Callable[[int], list[int]]) -> dict[int, list[Proc]]:
    out: dict[int, list[Proc]] = {}
    for root in roots:
        chain: list[Proc] = []
        queue = deque([root])
        while queue:
            pid = queue.popleft()
            proc = proc_of(pid)
            if proc is not None:
                chain.append(proc)
                queue.extend(sorted(children_of(pid)))
        out[root] = chain
    return out

