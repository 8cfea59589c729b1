"""Shared fixtures: isolated tmux servers, throwaway meshd homes, real daemons.

Each test gets its own tmux server on a socket in its tmp dir (never the
user's), its own MESHD_HOME/HOME, and, when asked, its own running meshd.
Fixture names avoid libtmux's pytest plugin (``server``, ``session``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lab import Lab, need_lab

from meshd.tmux.runner import Tmux

FIXTURES = Path(__file__).parent / "fixtures"
RAWREADER = FIXTURES / "rawreader.py"


@dataclass
class Mesh:
    """One simulated user on one host: tmux server, state dir, environment."""

    root: Path
    env: dict[str, str]
    tmux: Tmux

    @property
    def home(self) -> Path:
        return Path(self.env["MESHD_HOME"])

    @staticmethod
    def argv(*argv: str) -> list[str]:
        """The command line that runs ``mesh``/``notify-pane``/``meshd`` (by module)."""
        module = {"mesh": "meshd.cli.mesh_entry", "notify-pane": "meshd.cli.notify",
                  "meshd": "meshd.cli.daemon_main"}[argv[0]]
        code = (f"import sys; from {module} import main; sys.argv[0] = {argv[0]!r}; "
                "sys.exit(main())")
        return [sys.executable, "-c", code, *argv[1:]]

    def run(self, *argv: str, input: bytes | None = None, timeout: float = 60,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``mesh``/``notify-pane``/``meshd`` (by module) in this mesh's environment."""
        return subprocess.run(self.argv(*argv),
                              input=input.decode() if input is not None else None,
                              capture_output=True, text=True, timeout=timeout,
                              env={**self.env, **(env or {})})

    def new_window(self, name: str, command: str, session: str = "main") -> str:
        """Open a window running ``command``; returns its pane id."""
        has = subprocess.run(self.tmux.argv("has-session", "-t", f"={session}"),
                             capture_output=True).returncode == 0
        args = (["new-window", "-t", f"={session}:", "-n", name] if has else
                ["new-session", "-d", "-s", session, "-n", name, "-x", "160", "-y", "40"])
        out = self.tmux.run(*args, "-P", "-F", "#{pane_id}", command)
        return out.strip()

    def capture(self, pane: str) -> str:
        return self.tmux.run("capture-pane", "-p", "-t", pane)

    def wait_for(self, pane: str, text: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.capture(pane)
            if text in screen:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not on pane {pane} after {timeout} s:\n{screen}")
            time.sleep(0.05)

    def start_daemon(self) -> None:
        r = self.run("mesh", "up")
        assert r.returncode == 0, r.stderr + r.stdout

    def stop_daemon(self) -> None:
        self.run("mesh", "down")


def _make_mesh(tmp: Path) -> Mesh:
    root = tmp / "mesh"
    home = root / "home"
    home.mkdir(parents=True)
    sock = root / "tmux.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TMUX", "MESHD_"))}
    env.update(HOME=str(home), MESHD_HOME=str(home / ".agents"), MESHD_TMUX_SOCKET=str(sock),
               MESHD_HOST="testhost", MESHD_DISCOVERY_DEBOUNCE_MS="5",
               TERM="xterm-256color")
    return Mesh(root, env, Tmux(sock, 10, Path("/dev/null")))


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    """An isolated tmux server + meshd home; the daemon is not started."""
    m = _make_mesh(tmp_path)
    try:
        yield m
    finally:
        m.stop_daemon()
        subprocess.run(m.tmux.argv("kill-server"), capture_output=True)


@pytest.fixture
def live_mesh(mesh: Mesh) -> Mesh:
    """``mesh`` with a tmux session and a running meshd."""
    mesh.new_window("shell", "bash --norc --noprofile")
    mesh.start_daemon()
    return mesh


def until(pred: Callable[[], Any], timeout: float = 15, what: str = "condition") -> Any:
    """Poll ``pred`` until it returns something truthy (returned); fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout} s")
        time.sleep(0.05)


def rawreader_cmd(log: Path, prompt: str = "> ", burst_ms: int = 0) -> str:
    burst = f" --burst-ms {burst_ms}" if burst_ms else ""
    return f"{shutil.which('python3') or sys.executable} {RAWREADER} {log} --prompt '{prompt}'{burst}"


@pytest.fixture(scope="module")
def lab_module() -> Iterator[Lab]:
    """Three hosts (network namespaces, own users, real sshd); needs root (docs/lab.md)."""
    need_lab()
    with Lab(3) as lab:
        yield lab


@pytest.fixture
def lab(lab_module: Lab) -> Lab:
    lab_module.reset()
    return lab_module
