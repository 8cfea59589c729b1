"""One batched ``list-panes -a`` for every pane of the server.

Session and window names are user-controlled and may contain any byte,
including newlines, so fields and records are separated by random tokens
made fresh for each scan: a crafted name cannot forge a field.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from meshd.tmux.runner import NoTmuxServer, PaneGone, Tmux

_FIELDS = (
    "pid", "session_id", "session_name", "window_id", "window_name", "window_index",
    "window_panes", "pane_id", "pane_index", "pane_pid", "pane_current_command",
    "pane_current_path", "pane_dead", "pane_in_mode", "pane_input_off", "pane_width",
    "pane_height", "cursor_x", "cursor_y", "cursor_flag", "pane_title", "@agent-role",
    "@agent-scope",
)


@dataclass(frozen=True)
class PaneRow:
    server_pid: int
    session_id: str
    session: str
    window_id: str
    window: str
    window_index: int
    window_panes: int
    pane_id: str
    pane_index: int
    pane_pid: int
    command: str
    cwd: str
    dead: bool
    in_mode: bool
    input_off: bool
    width: int
    height: int
    cursor_x: int
    cursor_y: int
    cursor_visible: bool
    title: str
    role: str
    scope: str


def _int(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        return 0


def parse(text: str, fsep: str, rsep: str) -> list[PaneRow]:
    rows = []
    for rec in text.split(rsep):
        rec = rec.lstrip("\n")
        if not rec:
            continue
        f = rec.split(fsep)
        if len(f) != len(_FIELDS):
            continue
        d = dict(zip(_FIELDS, f, strict=True))
        rows.append(PaneRow(
            server_pid=_int(d["pid"]), session_id=d["session_id"], session=d["session_name"],
            window_id=d["window_id"], window=d["window_name"],
            window_index=_int(d["window_index"]), window_panes=_int(d["window_panes"]),
            pane_id=d["pane_id"], pane_index=_int(d["pane_index"]), pane_pid=_int(d["pane_pid"]),
            command=d["pane_current_command"], cwd=d["pane_current_path"],
            dead=d["pane_dead"] == "1", in_mode=d["pane_in_mode"] == "1",
            input_off=d["pane_input_off"] == "1", width=_int(d["pane_width"]),
            height=_int(d["pane_height"]), cursor_x=_int(d["cursor_x"]),
            cursor_y=_int(d["cursor_y"]), cursor_visible=d["cursor_flag"] == "1",
            title=d["pane_title"], role=d["@agent-role"], scope=d["@agent-scope"],
        ))
    return rows


def scan(tmux: Tmux, target: str | None = None) -> list[PaneRow]:
    """All panes of the server (or of one ``target`` pane).  [] when no server runs.

    ``@agent-role`` / ``@agent-scope`` resolve window first, then session,
    which is tmux's own lookup order for user options in formats.
    """
    fsep, rsep = f"<{secrets.token_hex(8)}>", f"<{secrets.token_hex(8)}>"
    fmt = fsep.join("#{" + f + "}" for f in _FIELDS) + rsep
    if target:
        return parse(tmux.run("display-message", "-p", "-t", target, fmt), fsep, rsep)
    try:
        return parse(tmux.run("list-panes", "-a", "-F", fmt), fsep, rsep)
    except NoTmuxServer:
        return []


def look(tmux: Tmux, pane_id: str) -> tuple[PaneRow | None, list[str]]:
    """One pane's row and its screen (with SGR escapes) in a single tmux call.

    ``(None, [])`` when the pane no longer exists.
    """
    fsep, rsep = f"<{secrets.token_hex(8)}>", f"<{secrets.token_hex(8)}>"
    fmt = fsep.join("#{" + f + "}" for f in _FIELDS) + rsep
    try:
        out = tmux.run("display-message", "-p", "-t", pane_id, fmt, ";",
                       "capture-pane", "-p", "-e", "-t", pane_id)
    except PaneGone:
        return None, []
    head, _, screen = out.partition(rsep)
    rows = parse(head + rsep, fsep, rsep)
    lines = screen.removeprefix("\n").split("\n")[:-1]
    return (rows[0] if rows else None), lines
