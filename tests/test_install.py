"""install.sh end to end: a throwaway HOME with a space in it and a private tmux server.

Each module fixture runs the real install.sh (real venv, real pip, real tmux) once or twice
and records what it saw, so pip runs three times for the whole module.  Two things are
stubbed, because they belong to the user account, not to HOME, and a test must not change
them: ``crontab`` (backed by a file in the sandbox) and ``systemctl`` (reports a user
manager as up only while a flag file exists, and logs its calls).
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALL_SH = REPO / "install.sh"
BEGIN = "# >>> meshd hooks >>>"
END = "# <<< meshd hooks <<<"
CRON_BEGIN = "# >>> meshd cron >>>"
PROGRAMS = ("mesh", "meshd", "notify-pane")
UNITS = ("meshd.service", "meshd-resync.service", "meshd-resync.timer")
HOOK_INDEX = 42

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="install.sh needs tmux")

# A user's own tmux.conf around a stale meshd block from an older install.  The stale block
# sets a hook the current template no longer has; the last line has no newline.
USER_BEFORE = (
    "# my own tmux settings\n"
    "set -g history-limit 5000\n"
    'set-hook -g session-created "set-option -g @user-hook ran"\n'
)
STALE_BLOCK = f"{BEGIN}\nset-hook -g pane-focus-in[{HOOK_INDEX}] {{ display-message stale }}\n{END}\n"
USER_AFTER = "# after the block, trailing spaces kept   \nbind-key X kill-pane"
USER_HOOK = "session-created[0] set-option -g @user-hook ran"  # as show-hooks prints it
USER_CRON = "0 3 * * * echo a job of the user's own\n"

CRONTAB_STUB = """#!/bin/sh
# crontab stub: the user's crontab is a file in the sandbox
f="$MESHD_TEST_CRONTAB"
case "$1" in
  -l) [ -f "$f" ] || { echo "no crontab for $(id -un)" >&2; exit 1; }; cat "$f" ;;
  -r) rm -f "$f" ;;
  -) cat >"$f" ;;
  *) cat "$1" >"$f" ;;
esac
"""

SYSTEMCTL_STUB = """#!/bin/sh
# systemctl stub: a user manager is "running" only while the flag file exists
printf '%s\\n' "$*" >>"$MESHD_TEST_SYSTEMCTL_LOG"
[ -e "$MESHD_TEST_SYSTEMD_UP" ] && exit 0
echo "Failed to connect to bus: No medium found" >&2
exit 1
"""


@dataclass
class Sandbox:
    """A HOME, a private tmux socket dir and stubbed crontab/systemctl, all under root."""

    root: Path
    home: Path
    env: dict[str, str]

    @property
    def venv(self) -> Path:
        return self.home / ".local/share/meshd/venv"

    @property
    def bin_dir(self) -> Path:
        return self.home / ".local/bin"

    @property
    def tmux_conf(self) -> Path:
        return self.home / ".tmux.conf"

    @property
    def unit_dir(self) -> Path:
        return self.home / ".config/systemd/user"

    @property
    def agents(self) -> Path:
        return self.home / ".agents"

    @property
    def crontab(self) -> Path:
        return Path(self.env["MESHD_TEST_CRONTAB"])

    @property
    def systemctl_log(self) -> Path:
        return Path(self.env["MESHD_TEST_SYSTEMCTL_LOG"])

    def install_sh(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(INSTALL_SH), *args],
            env=self.env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=600,
        )

    def tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", *args],
            env=self.env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout

    def hooks(self) -> str:
        """Global session hooks and global window/pane hooks (`show-hooks -g` shows only the first)."""
        return self.tmux("show-hooks", "-g") + self.tmux("show-hooks", "-gw")


def real_pip_cache() -> str:
    """The invoking user's pip cache, so the sandbox's pip reuses downloaded wheels."""
    if os.environ.get("PIP_CACHE_DIR"):
        return os.environ["PIP_CACHE_DIR"]
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(cache_home) / "pip")


def make_sandbox(root: Path) -> Sandbox:
    home = root / "home with space"
    stubs = root / "stubs"
    for folder in (home, stubs, root / "tmux"):
        folder.mkdir()
    for name, text in (("crontab", CRONTAB_STUB), ("systemctl", SYSTEMCTL_STUB)):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    # Nothing of the caller's tmux, XDG dirs, session bus or meshd settings may leak in: each
    # would point install.sh or tmux at the real account.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TMUX", "XDG_", "MESHD_", "DBUS_"))
    }
    env.update(
        HOME=str(home),
        PATH=f"{stubs}{os.pathsep}{os.environ['PATH']}",
        TMUX_TMPDIR=str(root / "tmux"),
        PIP_CACHE_DIR=real_pip_cache(),
        MESHD_INSTALL_NO_START="1",
        MESHD_TEST_CRONTAB=str(root / "crontab"),
        MESHD_TEST_SYSTEMCTL_LOG=str(root / "systemctl.log"),
        MESHD_TEST_SYSTEMD_UP=str(root / "systemd-up"),
    )
    return Sandbox(root=root, home=home, env=env)


def output(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"


def block_of(text: str) -> str:
    start = text.index(BEGIN)
    return text[start : text.index(END, start) + len(END) + 1]


@dataclass
class Installed:
    sandbox: Sandbox
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]
    conf_after_first: bytes
    crontab_after_first: str
    self_conf_after_first: str


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """Install without a user systemd (cron fallback), then again with one (upgrade path).

    Between the runs the user edits self.conf and config.toml, which the second run must keep.
    """
    sb = make_sandbox(tmp_path_factory.mktemp("install"))
    sb.tmux_conf.write_text(USER_BEFORE + STALE_BLOCK + USER_AFTER)
    sb.crontab.write_text(USER_CRON)
    sb.tmux("new-session", "-d", "-s", "work")  # a server that must get the hooks live
    try:
        first = sb.install_sh()
        assert first.returncode == 0, output(first)
        conf_after_first = sb.tmux_conf.read_bytes()
        crontab_after_first = sb.crontab.read_text()
        self_conf_after_first = (sb.agents / "self.conf").read_text()
        (sb.agents / "self.conf").write_text("my-own-name\n")
        if (sb.agents / "config.toml").exists():
            with (sb.agents / "config.toml").open("a") as config:
                config.write("# edited by the user\n")
        Path(sb.env["MESHD_TEST_SYSTEMD_UP"]).touch()
        second = sb.install_sh()
        assert second.returncode == 0, output(second)
        yield Installed(sb, first, second, conf_after_first, crontab_after_first, self_conf_after_first)
    finally:
        subprocess.run(["tmux", "kill-server"], env=sb.env, capture_output=True, check=False)


def test_links_point_into_the_venv(installed: Installed) -> None:
    sb = installed.sandbox
    for program in PROGRAMS:
        link = sb.bin_dir / program
        assert link.is_symlink(), program
        assert Path(os.readlink(link)) == sb.venv / "bin" / program
        assert os.access(link, os.X_OK), program


def test_mesh_help_runs_through_the_link(installed: Installed) -> None:
    sb = installed.sandbox
    done = subprocess.run(
        [str(sb.bin_dir / "mesh"), "--help"],
        env=sb.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, output(done)


def test_tmux_conf_gets_one_block_between_the_user_lines(installed: Installed) -> None:
    sb = installed.sandbox
    conf = sb.tmux_conf.read_text()
    block = block_of(conf)
    assert conf == USER_BEFORE + block + USER_AFTER  # stale block replaced in place
    assert conf.count(BEGIN) == 1
    assert conf.count(END) == 1
    assert "stale" not in block
    assert not [line for line in block.splitlines() if "@MESH@" in line and line[0] != "#"]
    assert f"'{sb.bin_dir / 'mesh'}' hook on" in block
    assert sb.tmux_conf.read_bytes() == installed.conf_after_first  # second run: no change


def test_hooks_are_loaded_into_the_running_server(installed: Installed) -> None:
    hooks = installed.sandbox.hooks()
    mesh = str(installed.sandbox.bin_dir / "mesh")
    for event in (
        "session-created",
        "session-closed",
        "window-linked",
        "window-unlinked",
        "window-renamed",
        "after-split-window",
        "pane-exited",
    ):
        line = next(h for h in hooks.splitlines() if h.startswith(f"{event}[{HOOK_INDEX}] "))
        assert mesh in line
    assert USER_HOOK in hooks  # the user's own hook stays
    assert "stale" not in hooks  # hooks of the replaced block are unset


def test_hooks_pass_the_session_id_to_mesh(installed: Installed) -> None:
    """The hook runs `mesh hook on|off ID` by tmux id, whatever the session is called."""
    sb = installed.sandbox
    link = sb.bin_dir / "mesh"
    log = sb.root / "hook-calls.log"
    target = os.readlink(link)
    link.unlink()
    link.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >>{shlex.quote(str(log))}\n')
    link.chmod(0o755)
    try:
        name = "evil;$(touch pwned)'\""
        session_id = sb.tmux("new-session", "-d", "-P", "-F", "#{session_id}", "-s", name)
        session_id = session_id.strip()
        sb.tmux("kill-session", "-t", session_id)
        calls = wait_for_line(log, f"hook off {session_id}")
    finally:
        link.unlink()
        link.symlink_to(target)
    assert f"hook on {session_id}" in calls
    assert not (sb.home / "pwned").exists()


def wait_for_line(log: Path, line: str, timeout_s: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines() if log.exists() else []
        if line in lines:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"{line!r} never reached {log}: {lines}")


def test_units_are_written_with_absolute_paths(installed: Installed) -> None:
    sb = installed.sandbox
    units = {name: (sb.unit_dir / name).read_text() for name in UNITS}
    for text in units.values():
        assert "@MESH" not in text
    assert f'ExecStart="{sb.venv}/bin/meshd" run\n' in units["meshd.service"]
    assert f'ExecStart="{sb.venv}/bin/mesh" resync\n' in units["meshd-resync.service"]


def test_state_dir_is_private_and_user_files_are_kept(installed: Installed) -> None:
    sb = installed.sandbox
    assert stat.S_IMODE(sb.agents.stat().st_mode) == 0o700
    assert installed.self_conf_after_first == socket.gethostname().split(".")[0] + "\n"
    assert (sb.agents / "self.conf").read_text() == "my-own-name\n"
    config = sb.agents / "config.toml"
    if config.exists():
        assert config.read_text().endswith("# edited by the user\n")
    else:
        assert "'mesh config init' failed" in installed.first.stderr
    assert {path.name for path in sb.agents.iterdir()} <= {"config.toml", "self.conf"}


def test_cron_fallback_then_systemd(installed: Installed) -> None:
    sb = installed.sandbox
    cron = installed.crontab_after_first
    assert cron.startswith(USER_CRON)
    assert cron.count(CRON_BEGIN) == 1
    mesh = f"'{sb.venv}/bin/mesh'"
    assert f"*/5 * * * * {mesh} resync >/dev/null 2>&1\n" in cron
    assert f"@reboot {mesh} up" in cron
    # The second run found a user systemd: units enabled, cron block gone, nothing started.
    assert sb.crontab.read_text() == USER_CRON
    calls = sb.systemctl_log.read_text().splitlines()
    assert "--user daemon-reload" in calls
    assert "--user enable meshd.service meshd-resync.timer" in calls
    assert not [call for call in calls if "restart" in call or "--now" in call or "start " in call]


@dataclass
class Uninstalled:
    sandbox: Sandbox
    install: subprocess.CompletedProcess[str]
    uninstall: subprocess.CompletedProcess[str]
    again: subprocess.CompletedProcess[str]
    purge: subprocess.CompletedProcess[str]
    conf_after_uninstall: str
    hooks_after_uninstall: str
    left_after_uninstall: list[Path]
    state_kept: bool


# Ends with a newline: install.sh adds one before its block if the file lacks it, and
# uninstalling leaves that newline, so only such a file comes back byte for byte.
USER_CONF = USER_BEFORE + USER_AFTER + "\n"


@pytest.fixture(scope="module")
def uninstalled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Uninstalled]:
    """Install, --uninstall twice, then --uninstall --purge, recording each step."""
    sb = make_sandbox(tmp_path_factory.mktemp("uninstall"))
    # Uninstalling needs the files in place, not a working meshd: skip the dependencies.
    sb.env["MESHD_PIP_ARGS"] = "--no-deps"
    sb.tmux_conf.write_text(USER_CONF)
    sb.tmux("new-session", "-d", "-s", "work")
    try:
        install = sb.install_sh()
        assert install.returncode == 0, output(install)
        (sb.home / ".agent-inbox").mkdir()
        uninstall = sb.install_sh("--uninstall")
        installed_paths = [
            *(sb.bin_dir / p for p in PROGRAMS),
            sb.venv,
            *(sb.unit_dir / u for u in UNITS),
        ]
        left = [path for path in installed_paths if path.exists() or path.is_symlink()]
        conf, hooks = sb.tmux_conf.read_text(), sb.hooks()
        state_kept = (sb.agents / "self.conf").exists() and (sb.home / ".agent-inbox").exists()
        again = sb.install_sh("--uninstall")
        purge = sb.install_sh("--uninstall", "--purge")
        yield Uninstalled(sb, install, uninstall, again, purge, conf, hooks, left, state_kept)
    finally:
        subprocess.run(["tmux", "kill-server"], env=sb.env, capture_output=True, check=False)


def test_uninstall_removes_what_install_added(uninstalled: Uninstalled) -> None:
    assert uninstalled.uninstall.returncode == 0, output(uninstalled.uninstall)
    assert uninstalled.left_after_uninstall == []
    assert uninstalled.conf_after_uninstall == USER_CONF
    assert f"[{HOOK_INDEX}]" not in uninstalled.hooks_after_uninstall
    assert USER_HOOK in uninstalled.hooks_after_uninstall


def test_uninstall_keeps_state_and_is_idempotent(uninstalled: Uninstalled) -> None:
    assert uninstalled.state_kept
    assert uninstalled.again.returncode == 0, output(uninstalled.again)


def test_uninstall_purge_removes_state(uninstalled: Uninstalled) -> None:
    sb = uninstalled.sandbox
    assert uninstalled.purge.returncode == 0, output(uninstalled.purge)
    assert not sb.agents.exists()
    assert not (sb.home / ".agent-inbox").exists()
    assert sb.tmux_conf.read_text() == USER_CONF


def path_without(folder: Path, missing: str) -> str:
    """A PATH of one folder linking every program on the current PATH except `missing`."""
    folder.mkdir()
    for entry in os.environ["PATH"].split(os.pathsep):
        source = Path(entry)
        if not source.is_dir():
            continue
        for program in source.iterdir():
            link = folder / program.name
            if program.name == missing or link.is_symlink() or not os.access(program, os.X_OK):
                continue
            link.symlink_to(program)
    return str(folder)


def test_missing_tmux_is_named_with_the_fix(tmp_path: Path) -> None:
    sb = make_sandbox(tmp_path)
    sb.env["PATH"] = path_without(tmp_path / "bin", "tmux")
    done = sb.install_sh()
    assert done.returncode == 1, output(done)
    assert "tmux" in done.stderr
    assert "apt-get install -y tmux" in done.stderr
    assert not sb.venv.exists()


def test_help_and_bad_arguments(tmp_path: Path) -> None:
    sb = make_sandbox(tmp_path)
    shown = sb.install_sh("--help")
    assert shown.returncode == 0
    assert "--uninstall" in shown.stdout
    assert sb.install_sh("--purge").returncode == 2
    assert sb.install_sh("--bogus").returncode == 2
    assert list(sb.home.iterdir()) == []
