"""Build the ``mesh demo`` tmux session and send its messages.  Blocking.

Every tmux call goes through one :class:`~meshd.tmux.runner.Tmux` (so tests run
the demo against an isolated server), and every message goes through the real
``notify-pane`` program as a subprocess, whether or not meshd is running.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass

from meshd.demo import RELAY_PHRASE, ROLES, notify_command
from meshd.errors import UsageError
from meshd.registry.address import PaneName, assign
from meshd.tmux.runner import NoTmuxServer, PaneGone, Tmux
from meshd.tmux.scan import scan

# Passed into the panes with `-e`: an existing tmux server keeps the environment it was
# started with, which need not be the caller's (MESHD_HOME, the tmux socket, the venv on PATH).
_PASSED_ENV = ("PATH", "MESHD_HOME", "MESHD_INBOX", "MESHD_TMUX_SOCKET", "MESHD_HOST")
WIDTH, HEIGHT = 200, 50


@dataclass(frozen=True)
class DemoPane:
    role: str
    window_id: str
    pane_id: str


@dataclass(frozen=True)
class DemoMessage:
    sender: str    # role
    to: str        # role
    text: str


@dataclass(frozen=True)
class Sent:
    message: DemoMessage
    to_address: str
    exit_code: int
    output: str    # notify-pane's stdout, else the first line of its stderr


def exists(tmux: Tmux, name: str) -> bool:
    try:
        tmux.run("has-session", "-t", f"={name}")
    except (NoTmuxServer, PaneGone):
        return False
    return True


def agent_argv(role: str) -> list[str]:
    return [sys.executable, "-m", "meshd.demo.agent", "--name", role]


def _env_flags(env: dict[str, str]) -> list[str]:
    return [f for k in _PASSED_ENV if env.get(k) for f in ("-e", f"{k}={env[k]}")]


def create(tmux: Tmux, name: str, *, replace: bool = False, cwd: str | None = None,
           env: dict[str, str] | None = None) -> list[DemoPane]:
    """A detached session ``name`` with one window per role, each running the demo agent.

    Raises UsageError when the session exists and ``replace`` is False.
    """
    env = dict(os.environ) if env is None else env
    if exists(tmux, name):
        if not replace:
            raise UsageError(f"tmux session {name!r} already exists",
                             hint=f"attach to it, add --replace, or pick --session NAME "
                                  f"(remove it: tmux kill-session -t {name})")
        tmux.run("kill-session", "-t", f"={name}")
    where = ["-c", cwd or os.getcwd()]
    panes = []
    for i, role in enumerate(ROLES):
        head = (["new-session", "-d", "-s", name, "-x", str(WIDTH), "-y", str(HEIGHT)] if i == 0
                else ["new-window", "-d", "-t", f"={name}:"])
        out = tmux.run(*head, "-n", role, "-P", "-F", "#{window_id} #{pane_id}", *where,
                       *_env_flags(env), "--", *agent_argv(role))
        window_id, pane_id = out.split()
        # A crashed agent leaves its traceback on screen instead of closing the window.
        tmux.run("set-option", "-w", "-t", window_id, "remain-on-exit", "on")
        tmux.run("set-option", "-w", "-t", window_id, "@agent-role", role)
        panes.append(DemoPane(role, window_id, pane_id))
    tmux.run("select-window", "-t", panes[0].window_id)
    return panes


def wait_ready(tmux: Tmux, panes: Iterable[DemoPane], timeout_s: float = 10.0) -> list[str]:
    """Wait until each agent shows its prompt; returns the roles that never did."""
    waiting = {p.role: p for p in panes}
    deadline = time.monotonic() + timeout_s
    while waiting and time.monotonic() < deadline:
        for role, p in list(waiting.items()):
            if f"{role}> " in screen(tmux, p.pane_id):
                del waiting[role]
        time.sleep(0.05)
    return sorted(waiting)


def screen(tmux: Tmux, pane_id: str) -> str:
    try:
        return tmux.run("capture-pane", "-p", "-J", "-t", pane_id)
    except PaneGone:
        return ""


def addresses(tmux: Tmux, host: str, panes: Iterable[DemoPane]) -> dict[str, str]:
    """role -> mesh address, computed over all panes exactly as discovery names them."""
    rows = [r for r in scan(tmux) if not r.dead]
    by_pane = assign(host, (PaneName(r.pane_id, r.session, r.window, r.window_id,
                                     r.pane_index, r.window_panes) for r in rows))
    return {p.role: by_pane[p.pane_id] for p in panes if p.pane_id in by_pane}


def script(addr: dict[str, str], rounds: int) -> list[DemoMessage]:
    """Per round: architect -> builder (relayed on to the reviewer), and
    reviewer -> architect (relayed on to the builder), so every pane receives."""
    out = []
    for r in range(1, rounds + 1):
        out += [
            DemoMessage("architect", "builder", f"round {r}: build feature-{r} from the spec "
                        f"in FRAMEWORK.md; {RELAY_PHRASE} {addr['reviewer']}"),
            DemoMessage("reviewer", "architect", f"round {r}: ready to review feature-{r} "
                        f"once it lands; {RELAY_PHRASE} {addr['builder']}"),
        ]
    return out


def send(message: DemoMessage, addr: dict[str, str], env: dict[str, str] | None = None,
         wait_s: float = 10.0) -> Sent:
    """Send one demo message with ``notify-pane``, as the sender's address."""
    env = dict(os.environ) if env is None else env
    # Not the caller's pane: the message is from the demo role, whoever runs `mesh demo`.
    child_env = {k: v for k, v in env.items() if k not in ("TMUX", "TMUX_PANE")}
    child_env["MESH_SENDER"] = addr[message.sender]
    to = addr[message.to]
    argv = [*notify_command(), f"--wait={wait_s:g}", to, message.text]
    try:
        p = subprocess.run(argv, capture_output=True, text=True, env=child_env, check=False,
                           stdin=subprocess.DEVNULL, timeout=wait_s + 30)
    except subprocess.TimeoutExpired:
        return Sent(message, to, 124, f"notify-pane did not finish within {wait_s + 30:g} s")
    shown = p.stdout.strip() if p.returncode == 0 else (p.stderr.strip().splitlines() or ["?"])[0]
    return Sent(message, to, p.returncode, shown)
