"""A throwaway tmux server (``tmux -L <unique>``) with one pane per program, for the agent tests
and the corpus recorder: start a program, type into it, paste into it, read its screen.

Talks to tmux through its CLI, as meshd does. :meth:`Tmux.kill` ends the server and then every
process still running with one of the throwaway homes the panes were started with: the CLIs
leave helpers that outlive tmux (Codex's app-server daemon, Gemini CLI's relaunched node).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from meshd.delivery.classify import PaneSnapshot, PaneState, Verdict, classify

_INFO = ("#{cursor_x}\t#{cursor_y}\t#{cursor_flag}\t#{pane_in_mode}\t#{pane_width}\t"
         "#{pane_height}\t#{pane_current_command}\t#{pane_pid}\t#{pane_title}")


@dataclass(frozen=True)
class Look:
    """One capture of a pane plus the pane's cursor and flags at that moment."""

    lines: tuple[str, ...]
    cursor_x: int
    cursor_y: int
    cursor_visible: bool
    in_mode: bool
    width: int
    height: int
    command: str
    title: str

    def plain(self) -> str:
        from meshd.delivery.classify import strip_sgr
        return "\n".join(strip_sgr(line).rstrip() for line in self.lines)


class Tmux:
    """An isolated tmux server; ``kill()`` it when done."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"meshd-test-{secrets.token_hex(4)}"
        self.homes: list[Path] = []

    def run(self, *args: str, stdin: bytes | None = None, check: bool = True) -> str:
        done = subprocess.run(["tmux", "-L", self.name, "-f", "/dev/null", *args],
                              input=stdin, capture_output=True, timeout=20)
        if check and done.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)}: {done.stderr.decode(errors='replace')}")
        return done.stdout.decode("utf-8", errors="replace")

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path,
              width: int, height: int) -> Pane:
        """A new session whose only pane runs ``argv`` with exactly ``env`` (nothing inherited
        from the tmux server but TERM, which tmux sets)."""
        name = f"s{secrets.token_hex(3)}"
        if "HOME" in env:
            self.homes.append(Path(env["HOME"]))
        env_args = ["env", "-i", f"TERM={env.get('TERM', 'tmux-256color')}",
                    *(f"{k}={v}" for k, v in env.items() if k != "TERM")]
        pane = self.run("new-session", "-d", "-P", "-F", "#{pane_id}", "-s", name,
                        "-x", str(width), "-y", str(height), "-c", str(cwd),
                        *env_args, *argv).strip()
        self.run("set-option", "-t", name, "remain-on-exit", "on")
        self.run("set-option", "-t", name, "status", "off")
        self.run("resize-window", "-t", name, "-x", str(width), "-y", str(height))
        return Pane(self, pane)

    def kill(self) -> None:
        self.run("kill-server", check=False)
        for home in self.homes:
            reap(home)
        tmpdir = Path(os.environ.get("TMUX_TMPDIR") or "/tmp") / f"tmux-{os.getuid()}"
        (tmpdir / self.name).unlink(missing_ok=True)


def reap(home: Path, timeout_s: float = 5.0) -> list[int]:
    """Kill every process whose environment has ``HOME=home`` (a test's throwaway home, so
    nothing else matches); SIGTERM, then SIGKILL after ``timeout_s``. Returns the pids."""
    needle = f"HOME={home}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout_s
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if Path(f"/proc/{p}").exists() and not _zombie(p)]
            time.sleep(0.05)
        if not alive:
            break
    return pids


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


class Pane:
    def __init__(self, tmux: Tmux, pane_id: str) -> None:
        self.tmux = tmux
        self.id = pane_id

    def look(self) -> Look:
        out = self.tmux.run("display-message", "-p", "-t", self.id, _INFO, ";",
                            "capture-pane", "-p", "-e", "-t", self.id)
        head, _, screen = out.partition("\n")
        f = head.split("\t")
        height = int(f[5])
        lines = screen.split("\n")[:height]
        lines += [""] * (height - len(lines))
        return Look(tuple(lines), int(f[0]), int(f[1]), f[2] == "1", f[3] == "1", int(f[4]),
                    height, f[6], "\t".join(f[8:]))

    def snapshot(self, tool: str, *, shells: Sequence[str] = ("bash", "zsh", "fish"),
                 gap_s: float = 0.1) -> tuple[PaneSnapshot, Look]:
        """Two looks ``gap_s`` apart, as meshd takes them; the snapshot is of the second."""
        first = self.look()
        time.sleep(gap_s)
        second = self.look()
        return to_snapshot(tool, second, changing=first.lines != second.lines,
                           shell_child=second.command not in shells), second

    def verdict(self, tool: str) -> Verdict:
        return classify(self.snapshot(tool)[0])

    def wait_state(self, tool: str, want: PaneState, timeout_s: float,
                   also: Callable[[Look], bool] = lambda _: True) -> Look:
        """Poll until classify() says ``want`` (and ``also`` holds); AssertionError after."""
        deadline = time.monotonic() + timeout_s
        while True:
            snap, look = self.snapshot(tool)
            verdict = classify(snap)
            if verdict.state is want and also(look):
                return look
            if time.monotonic() > deadline:
                raise AssertionError(f"pane never became {want} within {timeout_s} s; last "
                                     f"verdict {verdict}; screen:\n{look.plain()}")
            time.sleep(0.2)

    def wait_text(self, text: str | tuple[str, ...], timeout_s: float) -> Look:
        """Poll until the screen shows ``text`` (any of them, for a tuple)."""
        wanted = (text,) if isinstance(text, str) else text
        deadline = time.monotonic() + timeout_s
        while True:
            look = self.look()
            if any(t in look.plain() for t in wanted):
                return look
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not on screen after {timeout_s} s:\n{look.plain()}")
            time.sleep(0.2)

    def type(self, text: str) -> None:
        """Type ``text`` literally, as a human would (no Enter)."""
        self.tmux.run("send-keys", "-t", self.id, "-l", "--", text)

    def keys(self, *keys: str) -> None:
        self.tmux.run("send-keys", "-t", self.id, *keys)

    def paste(self, text: str) -> None:
        """Bracketed paste through a uniquely named buffer fed on stdin (meshd's way)."""
        buf = f"meshd-test-{secrets.token_hex(4)}"
        self.tmux.run("load-buffer", "-b", buf, "-", stdin=text.encode())
        self.tmux.run("paste-buffer", "-p", "-d", "-b", buf, "-t", self.id)

    def resize(self, width: int, height: int) -> None:
        self.tmux.run("resize-window", "-t", self.id, "-x", str(width), "-y", str(height))


def to_snapshot(tool: str, look: Look, *, changing: bool = False,
                shell_child: bool = False) -> PaneSnapshot:
    return PaneSnapshot(tool=tool, lines=look.lines, cursor_x=look.cursor_x,
                        cursor_y=look.cursor_y, width=look.width, height=look.height,
                        in_mode=look.in_mode, changing=changing, shell_child=shell_child,
                        title=look.title, cursor_visible=look.cursor_visible)


def base_env(home: Path) -> dict[str, str]:
    """A minimal environment for a program under test, with ``home`` as HOME."""
    return {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "USER": os.environ.get("USER", "root"),
            "SHELL": "/bin/bash"}
