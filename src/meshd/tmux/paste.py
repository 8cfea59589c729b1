"""Guarded paste and Enter: the pane is checked by the tmux server itself.

Each step runs as one tmux command list whose ``if-shell -F`` condition is
evaluated inside the server, atomically with the paste: the pane must still
run the same process (``pane_pid``), be alive, not in copy-mode and not have
input disabled.  So a pane replaced between our check and our send receives
nothing, and copy-mode never swallows a message silently.

The text travels on stdin into a uniquely named buffer that ``paste-buffer -d``
deletes; on any failure the buffer is deleted too, so no buffer is left.
"""

from __future__ import annotations

import re
import secrets

from meshd.errors import Refused, TmuxError
from meshd.tmux.runner import Tmux

_PANE = re.compile(r"^%\d+$")


def _guard(pane_id: str, pane_pid: int) -> str:
    if not _PANE.match(pane_id):
        raise TmuxError(f"bad pane id {pane_id!r}")
    checks = [f"#{{==:#{{pane_pid}},{int(pane_pid)}}}", "#{!=:#{pane_in_mode},1}",
              "#{!=:#{pane_dead},1}", "#{!=:#{pane_input_off},1}"]
    cond = checks[-1]
    for c in reversed(checks[:-1]):
        cond = f"#{{&&:{c},{cond}}}"
    return cond


def paste(tmux: Tmux, pane_id: str, pane_pid: int, text: str) -> None:
    """Paste ``text`` (already sanitised) as a bracketed paste, or raise Refused."""
    name = f"meshd-{secrets.token_hex(8)}"
    ok = f"paste-buffer -p -d -b {name} -t {pane_id} ; display-message -p meshd:ok"
    ko = f"delete-buffer -b {name} ; display-message -p meshd:refused"
    try:
        out = tmux.run("load-buffer", "-b", name, "-", ";",
                       "if-shell", "-F", "-t", pane_id, _guard(pane_id, pane_pid), ok, ko,
                       stdin=text.encode("utf-8"))
    except TmuxError:
        tmux.run("delete-buffer", "-b", name, check=False)
        raise
    if "meshd:ok" not in out:
        raise Refused(f"pane {pane_id} changed before the paste (replaced, dead, in copy-mode "
                      "or input disabled); nothing was sent")


def press_enter(tmux: Tmux, pane_id: str, pane_pid: int, key: str = "Enter") -> bool:
    """Press Enter (a fixed key name, never message text) if the pane is still the same."""
    if key not in ("Enter", "Tab", "C-m"):
        raise TmuxError(f"refusing to send key {key!r}")
    out = tmux.run("if-shell", "-F", "-t", pane_id, _guard(pane_id, pane_pid),
                   f"send-keys -t {pane_id} {key} ; display-message -p meshd:ok",
                   "display-message -p meshd:refused")
    return "meshd:ok" in out


def capture(tmux: Tmux, pane_id: str, *, escapes: bool = True) -> list[str]:
    """The visible screen of a pane, one string per row (with SGR escapes if asked)."""
    args = ["capture-pane", "-p", "-t", pane_id] + (["-e"] if escapes else [])
    return tmux.run(*args).split("\n")[:-1] or [""]


def leftover_buffers(tmux: Tmux) -> list[str]:
    """Names of meshd buffers still in the server (should always be empty)."""
    out = tmux.run("list-buffers", "-F", "#{buffer_name}", check=False)
    return [b for b in out.split("\n") if b.startswith("meshd-")]
