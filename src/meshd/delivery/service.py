"""Deliver one message into one local pane, by the delivery rules.

Blocking; the daemon runs it in a worker thread, and ``notify-pane`` runs it
directly when the daemon is down.  Steps, under a per-pane file lock so that
concurrent senders (threads, or processes in degraded mode) never interleave:

1. read the pane (``display-message`` of the target) and its screen;
2. classify it (:mod:`meshd.delivery.classify`) and apply the policy
   (a message to a bare shell prompt arrives as ``# `` comment lines, so it
   never runs as a command):
   idle -> send; typing -> refuse unless forced; dialog -> refuse unless
   ``force_dialog``; busy -> send if the tool queues typed input, else wait or
   refuse; unknown -> refuse for agent CLIs, send for shells and other REPLs;
3. guarded bracketed paste (:mod:`meshd.tmux.paste`), the tool's paste
   window, a guarded Enter;
4. verify the submit, pressing Enter again a bounded number of times.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from meshd.delivery import classify as cl
from meshd.delivery.message import COMMENTING_SHELLS, as_shell_comment
from meshd.errors import Refused, TmuxError
from meshd.files import private_dir
from meshd.tmux import paste as tp
from meshd.tmux.runner import PaneGone, Tmux
from meshd.tmux.scan import PaneRow, look

AGENT_TOOLS = frozenset({"claude", "codex", "gemini", "aider", "cursor-agent"})
SHELLS = frozenset({"bash", "zsh", "fish", "sh", "dash", "ksh", "mksh", "ash", "tcsh", "csh"})
_POLL_S = 0.03


@dataclass(frozen=True)
class SendOptions:
    force: bool = False            # deliver over a draft (FORCE_SEND=1)
    force_dialog: bool = False     # type into a permission/menu dialog
    wait_s: float = 0.0            # hold the message until the pane can take it
    enter_delay_s: float = 0.15    # paste window for tools without a measured one
    verify_timeout_s: float = 1.5
    enter_retries: int = 2


@dataclass
class Receipt:
    message_id: str
    pane_id: str
    tool: str
    state: str                     # pane state that allowed the send
    submitted: bool
    enters: int
    waited_s: float = 0.0
    evidence: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def new_message_id() -> str:
    return f"m{int(time.time() * 1000):x}-{secrets.token_hex(4)}"


def snapshot(row: PaneRow, lines: list[str], tool: str, *, changing: bool = False) -> cl.PaneSnapshot:
    return cl.PaneSnapshot(tool=tool, lines=tuple(lines), cursor_x=row.cursor_x,
                           cursor_y=row.cursor_y, width=row.width, height=row.height,
                           in_mode=row.in_mode, changing=changing,
                           shell_child=row.command not in SHELLS, title=row.title,
                           cursor_visible=row.cursor_visible)


def _look(tmux: Tmux, pane_id: str, pane_pid: int) -> tuple[PaneRow, list[str]]:
    """The pane's row and screen; PaneGone when it closed or now runs another process."""
    row, lines = look(tmux, pane_id)
    if row is None or row.pane_pid != pane_pid or row.dead:
        raise PaneGone(f"pane {pane_id} is gone or was replaced; nothing was sent",
                       hint="check `mesh agents`")
    return row, lines


def _decide(tmux: Tmux, row: PaneRow, lines: list[str], tool: str,
            opts: SendOptions) -> tuple[bool, cl.Verdict]:
    """(may send now, verdict) for a pane read just now."""
    if row.in_mode:
        return False, cl.Verdict(cl.PaneState.UNKNOWN, "pane is in copy-mode", ())
    if row.input_off:
        return False, cl.Verdict(cl.PaneState.UNKNOWN, "pane input is disabled", ())
    snap = snapshot(row, lines, tool)
    v = cl.classify(snap)
    if v.state is cl.PaneState.IDLE and tool in AGENT_TOOLS:
        time.sleep(0.05)  # an agent screen still redrawing is not idle yet
        row2, lines2 = _look(tmux, row.pane_id, row.pane_pid)
        v = cl.classify(snapshot(row2, lines2, tool, changing=lines2 != lines))
    ok = {
        cl.PaneState.IDLE: True,
        cl.PaneState.TYPING: opts.force,
        cl.PaneState.DIALOG: opts.force_dialog,
        cl.PaneState.BUSY: cl.QUEUES_WHILE_BUSY.get(tool, False) or opts.force,
        cl.PaneState.UNKNOWN: tool not in AGENT_TOOLS or opts.force,
    }[v.state]
    return ok, v


def _refusal(v: cl.Verdict, row: PaneRow) -> Refused:
    shown = "\n".join(f"    | {ln}" for ln in v.evidence[-6:])
    hint = {"typing": "retry later, add --wait, or --force to send over the draft",
            "dialog": "answer the dialog first; --force-dialog types into it anyway",
            "busy": "add --wait to deliver when the agent is idle"}.get(v.state.value,
                                                                        "add --wait or --force")
    return Refused(f"{row.pane_id} is {v.state.value}: {v.reason}" + (f"\n{shown}" if shown else ""),
                   hint=hint)


def _for_shell(row: PaneRow, tool: str, text: str, opts: SendOptions) -> str:
    """At a shell prompt a message would run as commands: deliver it as comments instead."""
    if tool != "shell" or row.command not in SHELLS:
        return text
    if row.command in COMMENTING_SHELLS:
        return as_shell_comment(text)
    if opts.force:
        return text
    raise Refused(f"{row.pane_id} is a {row.command} prompt, where a message would run as a command "
                  f"and {row.command} has no interactive comments by default",
                  hint="start an agent in the pane, or --force to type it anyway")


def deliver(tmux: Tmux, pane_id: str, pane_pid: int, tool: str, text: str, opts: SendOptions,
            lock_dir: Path, message_id: str | None = None) -> Receipt:
    """Send ``text`` (sanitised, tagged) into the pane; returns a receipt or raises.

    ``pane_pid`` is the process the caller expects in the pane: a pane that
    closed or was reused for another process receives nothing (PaneGone).
    """
    private_dir(lock_dir)
    start = time.monotonic()
    lock = FileLock(str(lock_dir / f"pane-{pane_pid}-{pane_id.lstrip('%')}.lock"))
    try:
        lock.acquire(timeout=max(opts.wait_s, 0) + 30)
    except Timeout:
        raise Refused(f"{pane_id}: another delivery holds the pane") from None
    try:
        while True:
            row, lines = _look(tmux, pane_id, pane_pid)
            ok, verdict = _decide(tmux, row, lines, tool, opts)
            if ok:
                break
            if time.monotonic() - start >= opts.wait_s:
                raise _refusal(verdict, row)
            time.sleep(0.1)
        waited = time.monotonic() - start
        text = _for_shell(row, tool, text, opts)
        tp.paste(tmux, pane_id, pane_pid, text)
        receipt = Receipt(message_id or new_message_id(), pane_id, tool, verdict.state.value,
                          False, 0, waited, list(verdict.evidence))
        _submit(tmux, row, tool, opts, receipt)
        return receipt
    finally:
        lock.release()


def _submit(tmux: Tmux, row: PaneRow, tool: str, opts: SendOptions, receipt: Receipt) -> None:
    # Measured paste windows for known tools; the configured delay for anything else.
    settle = opts.enter_delay_s if tool == "other" else cl.PASTE_SETTLE_S.get(tool, opts.enter_delay_s)
    time.sleep(settle)
    before = _settled_view(tmux, row)
    for _ in range(1 + opts.enter_retries):
        if not tp.press_enter(tmux, row.pane_id, row.pane_pid):
            raise TmuxError(f"{row.pane_id} went away before Enter; the text was pasted "
                            "but not submitted")
        receipt.enters += 1
        if _await_submit(tmux, row, tool, before, opts.verify_timeout_s):
            receipt.submitted = True
            return


def _settled_view(tmux: Tmux, row: PaneRow, limit_s: float = 1.0) -> tuple[int, int, tuple[str, ...]]:
    """The screen once the paste's echo has stopped changing it (bounded by ``limit_s``).

    The submit check compares against this view, so a late echo of the pasted text is
    never mistaken for the submit.
    """
    deadline = time.monotonic() + limit_s
    view = _input_view(*_look(tmux, row.pane_id, row.pane_pid))
    stable = 0
    while stable < 2 and time.monotonic() < deadline:
        time.sleep(_POLL_S)
        again = _input_view(*_look(tmux, row.pane_id, row.pane_pid))
        stable = stable + 1 if again == view else 0
        view = again
    return view


def _input_view(row: PaneRow, lines: list[str]) -> tuple[int, int, tuple[str, ...]]:
    return (row.cursor_x, row.cursor_y, tuple(lines))


def _await_submit(tmux: Tmux, row: PaneRow, tool: str, before: tuple[int, int, tuple[str, ...]],
                  timeout_s: float) -> bool:
    """True once the screen shows the input taken (no draft left, or the screen moved on)."""
    deadline = time.monotonic() + timeout_s
    while True:
        r, lines = _look(tmux, row.pane_id, row.pane_pid)
        if tool in AGENT_TOOLS or tool == "shell":
            if cl.classify(snapshot(r, lines, tool)).state is not cl.PaneState.TYPING:
                return True
        elif _input_view(r, lines) != before:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
