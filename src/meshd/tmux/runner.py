"""Run one tmux command line with a deadline and typed errors."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from meshd.errors import TmuxError


class NoTmuxServer(TmuxError):
    """No tmux server listens on the socket."""


class PaneGone(TmuxError):
    """The target pane, window or session no longer exists."""


@dataclass(frozen=True)
class Tmux:
    """A tmux server: the user's default one (``socket=None``) or one at a socket path."""

    socket: Path | None = None
    timeout_s: float = 5.0
    config_file: Path | None = None  # tmux -f: tests start servers with /dev/null

    @classmethod
    def from_env(cls, configured: str = "", timeout_s: float = 5.0) -> Tmux:
        """The configured socket, else the server of the calling pane ($TMUX), else default."""
        if configured:
            return cls(Path(configured), timeout_s)
        inside = os.environ.get("TMUX", "").split(",")[0]
        return cls(Path(inside) if inside else None, timeout_s)

    def argv(self, *args: str) -> list[str]:
        base = ["tmux"] if self.socket is None else ["tmux", "-S", str(self.socket)]
        if self.config_file is not None:
            base += ["-f", str(self.config_file)]
        return [*base, *args]

    def run(self, *args: str, stdin: bytes | None = None, check: bool = True) -> str:
        """Run ``tmux ARGS``; returns stdout.  Raises TmuxError on failure or timeout."""
        try:
            proc = subprocess.run(self.argv(*args), input=stdin, capture_output=True,
                                  timeout=self.timeout_s, check=False)
        except FileNotFoundError:
            raise TmuxError("tmux is not installed",
                            hint="install it: sudo apt-get install tmux") from None
        except subprocess.TimeoutExpired:
            raise TmuxError(f"tmux {args[0]} took longer than {self.timeout_s:g} s",
                            hint="is the tmux server stuck? try `tmux list-sessions`") from None
        if check and proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip() or f"exit {proc.returncode}"
            if "no server running" in err or "error connecting" in err:
                raise NoTmuxServer(f"no tmux server is running ({err})",
                                hint="start one with `tmux new-session`")
            if "can't find" in err:
                raise PaneGone(f"tmux {args[0]}: {err}")
            raise TmuxError(f"tmux {args[0]}: {err}")
        return proc.stdout.decode("utf-8", errors="replace")

    def alive(self) -> bool:
        try:
            self.run("display-message", "-p", "#{pid}")
        except TmuxError:
            return False
        return True
