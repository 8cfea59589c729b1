"""``mesh doctor``: checks of this host's meshd setup, returned as data.

Each check is a small function of a :class:`Context` returning one
:class:`Check` (name, ok|warn|fail, what it saw, how to fix it).  ``fail``
means something users will hit (no tmux, bad config, daemon down, state
readable by others); ``warn`` means meshd works but degraded (no hooks: agents
appear only at the next rescan; no timer; no sshd: peers cannot reach us).

Checks only read: they run ``tmux -V``, ``tmux show-hooks``, ``systemctl
--user is-enabled`` and ``crontab -l``, each under a short deadline, and ping
the daemon; they never start, fix or write anything.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from meshd import config as config_mod
from meshd.daemon.pidlock import running_pid
from meshd.errors import MeshError, TmuxError
from meshd.files import read_line_file
from meshd.paths import StatePaths
from meshd.tmux.runner import NoTmuxServer, Tmux
from meshd.transport import client

MIN_TMUX = (3, 2)
MIN_PYTHON = (3, 11)
TMUX_BLOCK = "# >>> meshd hooks >>>"
CRON_MARK = "mesh resync"
UNITS = ("meshd.service", "meshd-resync.timer")
_RUN_TIMEOUT_S = 3.0


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status.value, "detail": self.detail,
                "fix": self.fix}


@dataclass
class Context:
    """What the checks share: the environment, paths and (once loaded) the config."""

    env: dict[str, str]
    paths: StatePaths
    cfg: config_mod.Config | None = None
    config_error: str | None = None
    user_home: Path = field(default_factory=Path.home)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Context:
        env = dict(os.environ) if env is None else env
        ctx = cls(env, StatePaths.from_env(env), user_home=Path(env.get("HOME") or Path.home()))
        try:
            ctx.cfg = config_mod.load(ctx.paths, env)
        except MeshError as exc:
            ctx.config_error = str(exc)
        return ctx

    def which(self, name: str) -> str | None:
        return shutil.which(name, path=self.env.get("PATH", ""))

    def tmux(self) -> Tmux:
        cfg = self.cfg or config_mod.Config()
        socket = self.env.get("MESHD_TMUX_SOCKET", cfg.tmux.socket)
        return Tmux.from_env(socket, min(cfg.tmux.command_timeout_s, _RUN_TIMEOUT_S))


def run(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """(exit status, stdout + stderr) of a short probe; 127 when it cannot start."""
    try:
        p = subprocess.run(argv, capture_output=True, timeout=_RUN_TIMEOUT_S, env=env,
                           stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return p.returncode, (p.stdout + p.stderr).decode("utf-8", errors="replace")


def parse_tmux_version(text: str) -> tuple[int, int] | None:
    """``tmux 3.3a`` -> (3, 3); ``tmux next-3.5`` -> (3, 5); ``tmux master`` -> None."""
    m = re.search(r"(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


# -- programs -----------------------------------------------------------------------------
def check_tmux(ctx: Context) -> Check:
    fix = "install tmux >= 3.2: sudo apt-get install tmux"
    path = ctx.which("tmux")
    if path is None:
        return Check("tmux", Status.FAIL, "tmux is not on PATH", fix)
    code, out = run([path, "-V"], ctx.env)
    text = out.strip() or f"exit {code}"
    have = parse_tmux_version(text)
    if have is None:
        return Check("tmux", Status.WARN, f"cannot read a version from {text!r} "
                     "(a development build?)", "meshd needs tmux >= 3.2")
    if have < MIN_TMUX:
        return Check("tmux", Status.FAIL, f"{text} is older than 3.2", fix)
    return Check("tmux", Status.OK, f"{text} ({path})")


def check_ssh(ctx: Context) -> Check:
    path = ctx.which("ssh")
    if path is None:
        return Check("ssh client", Status.FAIL, "ssh is not on PATH (peers cannot be reached)",
                     "sudo apt-get install openssh-client")
    return Check("ssh client", Status.OK, path)


def check_sshd(ctx: Context) -> Check:
    path = ctx.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd")
                                      if os.access(p, os.X_OK)), None)
    if path is None:
        return Check("sshd", Status.WARN, "no sshd: peers cannot reach this host "
                     "(fine for a single host)", "sudo apt-get install openssh-server")
    return Check("sshd", Status.OK, path)


def check_python(ctx: Context) -> Check:
    v = sys.version_info
    text = f"Python {v.major}.{v.minor}.{v.micro} ({sys.executable})"
    if (v.major, v.minor) < MIN_PYTHON:
        return Check("python", Status.FAIL, text + " is older than 3.11",
                     "re-run ./install.sh with MESHD_PYTHON=python3.11 or newer")
    return Check("python", Status.OK, text)


# -- state ----------------------------------------------------------------------------------
def _private(path: Path, want: int, kind: str) -> str | None:
    """Why ``path`` is not private to this user (mode ``want``), or None when it is."""
    st = path.lstat()
    if kind == "dir" and not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    if st.st_uid != os.getuid():
        return f"{path} is owned by uid {st.st_uid}, not by you (uid {os.getuid()})"
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return f"{path} has mode {mode:04o}; others can read it (want {want:04o})"
    return None


def check_state_dir(ctx: Context) -> Check:
    p = ctx.paths
    if not p.home.exists():
        return Check("state dir", Status.WARN, f"{p.home} does not exist yet",
                     "run ./install.sh (or `mesh up`, which creates it)")
    problems = [why for path, want, kind in ((p.home, 0o700, "dir"), (p.state_dir, 0o700, "dir"),
                                             (p.socket, 0o600, "sock"))
                if path.exists() and (why := _private(path, want, kind))]
    if problems:
        return Check("state dir", Status.FAIL, "; ".join(problems),
                     f"chmod 700 {p.home} {p.state_dir}" + (f"; chmod 600 {p.socket}"
                                                          if p.socket.exists() else ""))
    return Check("state dir", Status.OK, f"{p.home} (0700, yours)")


def check_config(ctx: Context) -> Check:
    if ctx.config_error:
        return Check("config", Status.FAIL, ctx.config_error.split("\n  fix:")[0],
                     f"edit {ctx.paths.config} (`mesh config check` validates it)")
    where = ctx.paths.config if ctx.paths.config.exists() else "defaults (no config.toml)"
    return Check("config", Status.OK, f"{where} is valid")


def check_daemon(ctx: Context) -> Check:
    pid = running_pid(ctx.paths.pidfile)
    fix = "mesh up (or: systemctl --user start meshd)"
    if pid is None:
        return Check("daemon", Status.FAIL, "meshd is not running "
                     "(notify-pane still delivers locally, degraded)", fix)
    try:
        info = client.call(ctx.paths.socket, "ping", timeout_s=2.0)
    except MeshError as exc:
        return Check("daemon", Status.FAIL, f"pid {pid} holds the lock but does not answer "
                     f"ping: {exc.message}", f"see {ctx.paths.log}; mesh down && mesh up")
    return Check("daemon", Status.OK, f"pid {pid} answers ping (host {info.get('host', '?')}, "
                 f"version {info.get('version', '?')})")


# -- tmux integration -----------------------------------------------------------------------
def _mesh_link(ctx: Context) -> Path:
    return ctx.user_home / ".local" / "bin" / "mesh"


def check_tmux_hooks(ctx: Context) -> Check:
    tmux = ctx.tmux()
    conf = next((c for c in tmux_conf_candidates(ctx) if c.exists()), ctx.user_home / ".tmux.conf")
    fix = f"./install.sh, or: {shlex.join(tmux.argv('source-file', str(conf)))}"
    try:
        hooks = tmux.run("show-hooks", "-g")
    except NoTmuxServer:
        return Check("tmux hooks", Status.WARN, f"no tmux server is running{_at(tmux)}",
                     "start tmux; a new server loads the hooks from ~/.tmux.conf")
    except TmuxError as exc:
        return Check("tmux hooks", Status.WARN, f"cannot ask tmux: {exc.message}", fix)
    lines = [ln for ln in hooks.splitlines() if "hook on" in ln or "hook off" in ln]
    if not lines:
        return Check("tmux hooks", Status.WARN, "the tmux server has no meshd hooks; new windows "
                     "appear only at the next rescan", fix)
    link = str(_mesh_link(ctx))
    if not any(link in ln for ln in lines):
        return Check("tmux hooks", Status.WARN, f"{len(lines)} hook(s) loaded, but they do not "
                     f"run {link}", fix)
    return Check("tmux hooks", Status.OK, f"{len(lines)} hook(s) loaded, running {link}")


def _at(tmux: Tmux) -> str:
    return f" at {tmux.socket}" if tmux.socket else ""


def tmux_conf_candidates(ctx: Context) -> list[Path]:
    """Where tmux reads its config from, in order (as install.sh picks it)."""
    out = [ctx.user_home / ".tmux.conf"]
    if ctx.env.get("XDG_CONFIG_HOME"):
        out.append(Path(ctx.env["XDG_CONFIG_HOME"]) / "tmux" / "tmux.conf")
    return [*out, ctx.user_home / ".config" / "tmux" / "tmux.conf"]


def check_tmux_conf(ctx: Context) -> Check:
    candidates = tmux_conf_candidates(ctx)
    conf = next((c for c in candidates if c.exists()), candidates[0])
    try:
        has = TMUX_BLOCK in conf.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        has = False
    if not has:
        return Check("tmux.conf", Status.WARN, f"{conf} has no '{TMUX_BLOCK}' block "
                     "(a new tmux server starts without the hooks)", "./install.sh")
    return Check("tmux.conf", Status.OK, f"{conf} has the meshd hooks block")


def _unit_dir(ctx: Context) -> Path:
    base = ctx.env.get("XDG_CONFIG_HOME") or str(ctx.user_home / ".config")
    return Path(base) / "systemd" / "user"


def check_service(ctx: Context) -> Check:
    code, _ = run(["systemctl", "--user", "show-environment"], ctx.env)
    if code != 0:
        return _check_cron(ctx)
    missing = [u for u in UNITS if not (_unit_dir(ctx) / u).exists()]
    if missing:
        return Check("service", Status.WARN, f"{', '.join(missing)} not in {_unit_dir(ctx)}",
                     "./install.sh")
    code, out = run(["systemctl", "--user", "is-enabled", *UNITS], ctx.env)
    states = out.split()
    if code != 0 or any(s != "enabled" for s in states):
        return Check("service", Status.WARN, "units installed but not enabled: "
                     + " ".join(f"{u}={s}" for u, s in zip(UNITS, states, strict=False)),
                     "systemctl --user enable --now " + " ".join(UNITS))
    return Check("service", Status.OK, "systemd user units enabled: " + ", ".join(UNITS))


def _check_cron(ctx: Context) -> Check:
    code, out = run(["crontab", "-l"], ctx.env)
    if code == 0 and CRON_MARK in out:
        return Check("service", Status.OK, "no user systemd; crontab runs `mesh resync`")
    return Check("service", Status.WARN, "no user systemd and no crontab entry running "
                 "`mesh resync`: nothing restarts meshd or resyncs as a safety net",
                 "./install.sh (writes a crontab block), or run `mesh up` after each login")


def check_path(ctx: Context) -> Check:
    bindir = ctx.user_home / ".local" / "bin"
    on_path = str(bindir) in ctx.env.get("PATH", "").split(os.pathsep)
    found = ctx.which("notify-pane")
    fix = 'add to ~/.profile: export PATH="$HOME/.local/bin:$PATH"'
    if found is None:
        return Check("PATH", Status.FAIL, "notify-pane is not on PATH; agents cannot send "
                     "messages" + ("" if on_path else f" ({bindir} is not on PATH)"),
                     fix if not on_path else "./install.sh")
    if not on_path:
        return Check("PATH", Status.WARN, f"{bindir} is not on PATH (notify-pane found at "
                     f"{found})", fix)
    return Check("PATH", Status.OK, f"notify-pane is {found}")


# -- peers ----------------------------------------------------------------------------------
def check_peers(ctx: Context) -> Check:
    if not read_line_file(ctx.paths.peers_conf):
        return Check("peers", Status.OK, f"single host (no aliases in {ctx.paths.peers_conf})")
    try:
        links = client.call(ctx.paths.socket, "peers", timeout_s=3.0)
    except MeshError:
        return Check("peers", Status.WARN, "meshd is not running, so no links are up", "mesh up")
    down = [p for p in links if not p["up"]]
    if not down:
        return Check("peers", Status.OK, f"{len(links)} link(s) up: "
                     + ", ".join(f"{p['alias']} ({p['host']})" for p in links))
    detail = "; ".join(f"{p['alias']}: {p['error'] or 'down'}" for p in down)
    return Check("peers", Status.WARN, f"{len(down)} of {len(links)} link(s) down: {detail}",
                 "check `ssh ALIAS true` works without a prompt, and that meshd runs there")


CHECKS: tuple[Callable[[Context], Check], ...] = (
    check_tmux, check_ssh, check_sshd, check_python, check_state_dir, check_config,
    check_daemon, check_tmux_hooks, check_tmux_conf, check_service, check_path, check_peers,
)


def run_all(env: dict[str, str] | None = None) -> list[Check]:
    """Every check, in order; a check that crashes is reported as a failure, not raised."""
    ctx = Context.from_env(env)
    out = []
    for fn in CHECKS:
        try:
            out.append(fn(ctx))
        except Exception as exc:  # a doctor must finish its round
            out.append(Check(fn.__name__.removeprefix("check_"), Status.FAIL,
                             f"the check itself failed: {type(exc).__name__}: {exc}"))
    return out


def failed(checks: list[Check]) -> bool:
    return any(c.status is Status.FAIL for c in checks)
