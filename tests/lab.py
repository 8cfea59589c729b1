"""The test lab: N simulated hosts on one machine, each with its own network, user and sshd.

Every host gets a network namespace ``mlab-<run>-<name>`` (names ``a``, ``b``, ...) with
10.231.0.(10+i)/24 on ``eth0``, a veth into a bridge that lives in its own namespace
``mlab-<run>-br`` (the root namespace's networking is never touched), a Unix user
``mlab<run><name>`` with its home under ``root_dir``, a real OpenSSH sshd on port 22 of its
address, keys, ``~/.ssh/config`` aliases and ``known_hosts`` for every other host, and
``~/.agents/self.conf`` / ``peers.conf``.  Processes a test starts on a host run as that user
inside that namespace with a clean environment (:meth:`Host.env`).

Faults are nftables drops in the *receiver's* input hook (a drop in the sender's output
returns EPERM instead of silence; see RELIABILITY.md §2).  ``netem`` is not available here;
random loss uses ``numgen``.

:class:`Lab` is a context manager and removes everything it made on exit, after a failed test
too: processes in its namespaces or owned by its users, the namespaces, the users, the ACL
entries it granted and its directory.  What it made is recorded first in
``/run/mlab/<run>.json`` with the owner's pid, so a later lab removes the leftovers of a run
whose owner died (SIGKILL, power cut) and leaves a live run alone.

Needs root, iproute2, nftables, openssh-server/-client, util-linux (nsenter, setpriv), acl and
tmux; :func:`requires_lab` says which is missing, and :func:`need_lab` turns that into a skip,
or a failure under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

SUBNET = "10.231.0"
PREFIX = "mlab-"
STATE_DIR = Path("/run/mlab")
DEFAULT_ROOT = Path("/tmp/mlab")
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TOOLS = {  # command -> Debian package that provides it
    "ip": "iproute2", "nft": "nftables", "sshd": "openssh-server", "ssh": "openssh-client",
    "ssh-keygen": "openssh-client", "nsenter": "util-linux", "setpriv": "util-linux",
    "useradd": "passwd", "userdel": "passwd", "setfacl": "acl", "getfacl": "acl", "tmux": "tmux",
}
MAX_HOSTS = 26
SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with the NUL


class LabError(RuntimeError):
    """The lab could not be built, a host command failed, or cleanup left something behind."""


# -- prerequisites -------------------------------------------------------------------------
def _which(name: str) -> str | None:
    return shutil.which(name, path=SBIN_PATH)


def tool(name: str) -> str:
    path = _which(name)
    if path is None:
        raise LabError(f"{name} not found (Debian package {TOOLS.get(name, '?')})")
    return path


@functools.cache
def requires_lab() -> str | None:
    """Why the lab cannot run here, or None when it can.  Probes netns and nft for real."""
    if not sys.platform.startswith("linux"):
        return "the lab needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, useradd, sshd); CI runs it as root"
    missing = sorted({f"{t} ({TOOLS[t]})" for t in TOOLS if _which(t) is None})
    if missing:
        return "the lab needs " + ", ".join(missing)
    probe = f"{PREFIX}probe-{os.getpid()}-{secrets.token_hex(2)}"
    try:
        _sh(["ip", "netns", "add", probe])
        _sh(["nsenter", f"--net=/run/netns/{probe}", "--", tool("nft"), "list", "ruleset"])
    except LabError as exc:
        return f"network namespaces or nftables do not work here: {exc}"
    finally:
        subprocess.run([tool("ip"), "netns", "del", probe], capture_output=True)
    return None


def need_lab() -> None:
    """Skip the calling test when the lab cannot run; under ``CI=true`` fail instead."""
    import pytest

    reason = requires_lab()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"lab prerequisite missing in CI: {reason}", pytrace=False)
    pytest.skip(reason)


# -- small process helpers -----------------------------------------------------------------
def _sh(argv: Sequence[str], input: str | None = None, timeout: float = 30,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a root command (first word looked up in the sbin PATH)."""
    full = [tool(argv[0]), *argv[1:]]
    r = subprocess.run(full, input=input, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise LabError(f"{shlex.join(full)} exited {r.returncode}: {(r.stderr or r.stdout).strip()}")
    return r


def _proc_start(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _alive(pid: int) -> bool:
    return _proc_start(pid) is not None


def _lab_pids(namespaces: Iterable[str], uids: Iterable[int]) -> set[int]:
    """Live pids inside ``namespaces`` or owned (real uid) by ``uids``; never this process."""
    inodes = set()
    for ns in namespaces:
        with contextlib.suppress(OSError):
            inodes.add(f"net:[{os.stat(f'/run/netns/{ns}').st_ino}]")
    uid_set = {str(u) for u in uids}
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            netns = os.readlink(f"/proc/{entry.name}/ns/net")
            status = Path(f"/proc/{entry.name}/status").read_text()
        except OSError:
            continue
        uid = re.search(r"^Uid:\s+(\d+)", status, re.M)
        if netns in inodes or (uid and uid.group(1) in uid_set):
            found.add(int(entry.name))
    return {p for p in found if _alive(p)}


def _kill_all(namespaces: Sequence[str], uids: Sequence[int], timeout: float = 5) -> list[str]:
    """SIGKILL everything in the lab's namespaces or run by its users, until nothing is left."""
    deadline = time.monotonic() + timeout
    while pids := _lab_pids(namespaces, uids):
        if time.monotonic() > deadline:
            return [f"processes survived SIGKILL: {sorted(pids)}"]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    return []


_lock_depth = 0


@contextlib.contextmanager
def registry_lock() -> Iterator[None]:
    """Serialize runs' ACL edits (setfacl is read-modify-write) and leftover sweeps.
    Re-entrant within this process."""
    global _lock_depth
    STATE_DIR.mkdir(mode=0o700, exist_ok=True)
    if _lock_depth:
        _lock_depth += 1
        try:
            yield
        finally:
            _lock_depth -= 1
        return
    with open(STATE_DIR / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        _lock_depth = 1
        try:
            yield
        finally:
            _lock_depth = 0


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


# -- directory access for the lab users ----------------------------------------------------
def blocked_dirs(paths: Iterable[Path]) -> list[Path]:
    """Directories on the way to ``paths`` that others cannot traverse (no o+x)."""
    out: set[Path] = set()
    for p in paths:
        for d in [p, *p.parents] if p.is_dir() else p.parents:
            if not os.stat(d).st_mode & stat.S_IXOTH:
                out.add(d)
    return sorted(out)


def _grant(dirs: Iterable[Path], uids: Sequence[int]) -> None:
    spec = ",".join(f"u:{u}:x" for u in uids)
    with registry_lock():
        for d in dirs:
            _sh(["setfacl", "-m", spec, str(d)])


def _revoke(dirs: Iterable[Path], uids: Sequence[int]) -> list[str]:
    """Remove our ACL entries; drop the ACL entirely when it is back to the plain mode."""
    errors = []
    with registry_lock():
        for d in map(Path, dirs):
            if d.exists():
                errors += _revoke_one(d, uids)
    return errors


def _revoke_one(d: Path, uids: Sequence[int]) -> list[str]:
    def entries() -> list[str]:
        return _sh(["getfacl", "-pcnE", str(d)], check=False).stdout.split()

    ours = [u for u in uids if any(e.startswith(f"user:{u}:") for e in entries())]
    if ours:
        r = _sh(["setfacl", "-x", ",".join(f"u:{u}" for u in ours), str(d)], check=False)
        if r.returncode != 0:
            return [f"ACL entries left on {d}: {r.stderr.strip()}"]
    acl = entries()
    perms = {e.split(":")[0]: e.split(":")[2] for e in acl if "::" in e}
    named = [e for e in acl if "::" not in e]
    if not named and perms.get("mask", perms.get("group")) == perms.get("group"):
        _sh(["setfacl", "-b", str(d)], check=False)  # back to a plain mode, no xattr
    return []


# -- teardown from a recorded state (ours, or a dead run's) --------------------------------
def teardown(state: dict[str, Any]) -> list[str]:
    """Remove everything ``state`` lists; tolerant of parts that never existed.  Returns errors.

    A uid counts only while its recorded user name still maps to it: once a user is gone its
    uid may belong to a newer run's user, whose processes and ACL entries must stay."""
    namespaces = state["namespaces"]
    users = {}
    for u in state["users"]:
        with contextlib.suppress(KeyError):
            if u.get("uid") is not None and pwd.getpwnam(u["name"]).pw_uid == u["uid"]:
                users[u["name"]] = u["uid"]
    errors = _kill_all(namespaces, list(users.values()))
    for ns in namespaces:
        if Path(f"/run/netns/{ns}").exists():
            r = _sh(["ip", "netns", "del", ns], check=False)
            if r.returncode != 0:
                errors.append(f"ip netns del {ns}: {r.stderr.strip()}")
    if state.get("acl") and users:
        errors += _revoke(state["acl"], list(users.values()))
    for name in [u["name"] for u in state["users"] if u.get("uid") is None] + list(users):
        r = _sh(["userdel", name], check=False)
        if r.returncode not in (0, 6):  # 6: no such user
            errors.append(f"userdel {name}: {r.stderr.strip()}")
    if not state.get("keep_files"):
        shutil.rmtree(state["dir"], ignore_errors=True)
    return errors


def sweep_leftovers() -> list[str]:
    """Tear down the recorded runs whose owner process is dead; returns their run ids."""
    swept = []
    with registry_lock():
        for path in sorted(STATE_DIR.glob("*.json")):
            try:
                state = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if _proc_start(state["pid"]) == state["pid_start"]:
                continue  # owner alive: a parallel run
            errors = teardown(state)
            if errors:
                print(f"lab: leftovers of run {state['run']}: {errors}", file=sys.stderr)
            else:
                path.unlink()
            swept.append(state["run"])
        for ns in os.listdir("/run/netns") if os.path.isdir("/run/netns") else []:
            probe = re.fullmatch(rf"{PREFIX}probe-(\d+)-[0-9a-f]+", ns)
            if probe and not _alive(int(probe.group(1))):
                _sh(["ip", "netns", "del", ns], check=False)
    return swept


# -- hosts ---------------------------------------------------------------------------------
class Host:
    """One simulated host: a namespace, a Unix user, an sshd, a tmux server, maybe a meshd."""

    def __init__(self, lab: Lab, index: int) -> None:
        self.lab = lab
        self.index = index
        self.name = chr(ord("a") + index - 1)
        self.addr = f"{SUBNET}.{10 + index}"
        self.ns = f"{PREFIX}{lab.run}-{self.name}"
        self.user = f"mlab{lab.run}{self.name}"
        self.home = lab.dir / self.name
        self.sys_dir = lab.dir / f"{self.name}.sys"  # root-only: sshd config, host key, log
        self.uid = self.gid = -1
        self._sshd: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.addr} {self.user} uid={self.uid}>"

    # paths
    @property
    def tmux_socket(self) -> Path:
        return self.home / "tmux.sock"

    @property
    def agents_dir(self) -> Path:
        return self.home / ".agents"

    @property
    def meshd_log(self) -> Path:
        return self.agents_dir / "meshd" / "meshd.log"

    @property
    def sshd_log(self) -> Path:
        return self.sys_dir / "sshd.log"

    @property
    def host_key(self) -> Path:
        return self.sys_dir / "ssh_host_ed25519_key"

    @property
    def peers(self) -> list[Host]:
        return [h for h in self.lab.hosts.values() if h is not self]

    # running things as this host's user
    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The whole environment of this host's processes (nothing leaks from the test's)."""
        return {"HOME": str(self.home), "USER": self.user, "LOGNAME": self.user,
                "SHELL": "/bin/bash", "PATH": self.lab.user_path, "LANG": "C.UTF-8",
                "TERM": "xterm-256color", "MESHD_HOST": self.name,
                "MESHD_TMUX_SOCKET": str(self.tmux_socket), **self.lab.extra_env, **(extra or {})}

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run in this namespace as this user (the env comes from Popen)."""
        return [tool("nsenter"), f"--net=/run/netns/{self.ns}", "--", tool("setpriv"),
                f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "--", *argv]

    def run(self, argv: Sequence[str], env: dict[str, str] | None = None, input: str | None = None,
            timeout: float = 30, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as the user in the namespace, cwd = home; output captured as text."""
        r = subprocess.run(self.argv(argv), env=self.env(env), input=input, cwd=self.home,
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise LabError(f"{self.name}: {shlex.join(argv)} exited {r.returncode}:\n"
                           f"{r.stderr}{r.stdout}")
        return r

    def popen(self, argv: Sequence[str], env: dict[str, str] | None = None,
              **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` as the user in the namespace; the lab kills and reaps it at reset/exit."""
        kwargs.setdefault("cwd", self.home)
        proc = subprocess.Popen(self.argv(argv), env=self.env(env), **kwargs)
        self.lab.children.append(proc)
        return proc

    def run_root(self, argv: Sequence[str], input: str | None = None,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a root command inside this host's namespace (nft, ss, ip)."""
        return _sh(["nsenter", f"--net=/run/netns/{self.ns}", "--", tool(argv[0]), *argv[1:]],
                   input=input, check=check)

    def python(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run([self.lab.python, *args], **kwargs)

    def ssh(self, peer: str | Host, *command: str, timeout: float = 30,
            options: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
        """``ssh <alias> command`` with OpenSSH, exactly as the user would type it."""
        alias = peer.name if isinstance(peer, Host) else peer
        return self.run(["ssh", *options, alias, *command], timeout=timeout)

    # tmux
    def tmux(self, *args: str, check: bool = True) -> str:
        """Run tmux against this host's server (``-S ~/tmux.sock -f /dev/null``); stdout."""
        r = self.run(["tmux", "-S", str(self.tmux_socket), "-f", "/dev/null", *args], timeout=15)
        if check and r.returncode != 0:
            raise LabError(f"{self.name}: tmux {shlex.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def new_window(self, name: str, command: str, session: str = "main") -> str:
        """Open a window running ``command`` (the server starts on first use); its pane id."""
        has = self.run(["tmux", "-S", str(self.tmux_socket), "has-session", "-t",
                        f"={session}"]).returncode == 0
        args = (["new-window", "-t", f"={session}:", "-n", name] if has else
                ["new-session", "-d", "-s", session, "-n", name, "-x", "160", "-y", "40"])
        return self.tmux(*args, "-P", "-F", "#{pane_id}", command).strip()

    def capture(self, pane: str) -> str:
        return self.tmux("capture-pane", "-p", "-t", pane)

    # meshd
    def mesh(self, *args: str, env: dict[str, str] | None = None, input: str | None = None,
             timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return self.python("-m", "meshd.cli.mesh_entry", *args, env=env, input=input, timeout=timeout)

    def notify(self, *args: str, env: dict[str, str] | None = None, input: str | None = None,
               timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return self.python("-m", "meshd.cli.notify", *args, env=env, input=input, timeout=timeout)

    def start_meshd(self, timeout: float = 15) -> dict[str, Any]:
        """``mesh up`` as the user; returns ``mesh status --json``.  Raises with the log tail."""
        r = self.mesh("up", "--timeout", str(timeout), timeout=timeout + 10)
        if r.returncode != 0:
            raise LabError(f"{self.name}: mesh up exited {r.returncode}: {r.stderr}{r.stdout}\n"
                           f"meshd.log tail:\n{self.log_tail(self.meshd_log)}")
        s = self.mesh("status", "--json")
        if s.returncode != 0:
            raise LabError(f"{self.name}: meshd started but `mesh status` says {s.stdout}{s.stderr}"
                           f"\nmeshd.log tail:\n{self.log_tail(self.meshd_log)}")
        return dict(json.loads(s.stdout))

    def stop_meshd(self) -> None:
        self.mesh("down")

    def meshd_pid(self) -> int | None:
        """Pid of the running meshd (from its pidfile), or None."""
        try:
            pid = int((self.agents_dir / "meshd" / "meshd.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _alive(pid) else None

    def kill_meshd(self, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to meshd; returns its pid.  Raises if none runs."""
        pid = self.meshd_pid()
        if pid is None:
            raise LabError(f"{self.name}: no meshd running")
        os.kill(pid, sig)
        return pid

    def agents(self) -> list[dict[str, Any]]:
        r = self.mesh("agents", "--json")
        if r.returncode != 0:
            raise LabError(f"{self.name}: mesh agents exited {r.returncode}: {r.stderr}")
        return list(json.loads(r.stdout))

    @staticmethod
    def log_tail(path: Path, lines: int = 30) -> str:
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"({exc})"

    # setup pieces, called by Lab
    def _write_user_file(self, rel: str, text: str, mode: int = 0o600) -> None:
        path = self.home / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chown(path.parent, self.uid, self.gid)
        path.write_text(text)
        os.chmod(path, mode)
        os.chown(path, self.uid, self.gid)

    def _write_mesh_state(self) -> None:
        peers = [h.name for h in self.lab]  # the same list everywhere, this host too; a = anchor
        self._write_user_file(".agents/self.conf", self.name + "\n")
        self._write_user_file(".agents/peers.conf", "\n".join(peers) + "\n")

    def _write_ssh_client(self) -> None:
        ssh = self.home / ".ssh"
        blocks, known = [], []
        for p in self.peers:
            blocks.append(f"Host {p.name}\n    HostName {p.addr}\n    Port 22\n    User {p.user}\n"
                          f"    IdentityFile {ssh}/id_ed25519\n    IdentitiesOnly yes\n"
                          f"    UserKnownHostsFile {ssh}/known_hosts\n"
                          "    GlobalKnownHostsFile /dev/null\n    StrictHostKeyChecking yes\n"
                          "    UpdateHostKeys no\n    BatchMode yes\n    ConnectTimeout 3\n"
                          "    ServerAliveInterval 2\n    ServerAliveCountMax 3\n")
            known.append(f"{p.name},{p.addr} {p.host_pubkey()}")
        self._write_user_file(".ssh/config", "\n".join(blocks))
        self._write_user_file(".ssh/known_hosts", "\n".join(known) + "\n", 0o644)
        opts = f"{self.lab.key_options} " if self.lab.key_options else ""
        keys = [opts + (p.home / ".ssh/id_ed25519.pub").read_text().strip() for p in self.peers]
        self._write_user_file(".ssh/authorized_keys", "\n".join(keys) + "\n")

    def host_pubkey(self) -> str:
        """``ssh-ed25519 AAAA...`` of this host's current host key."""
        return " ".join(Path(f"{self.host_key}.pub").read_text().split()[:2])

    def _sshd_config(self) -> str:
        env = {k: v for k, v in self.env().items() if k not in ("HOME", "USER", "LOGNAME", "SHELL")}
        setenv = " ".join(f'{k}="{v}"' for k, v in env.items())
        return (f"# tests/lab.py run {self.lab.run}, host {self.name}\n"
                f"ListenAddress {self.addr}:22\nHostKey {self.host_key}\n"
                f"PidFile {self.sys_dir}/sshd.pid\nAllowUsers {self.user}\n"
                "AuthorizedKeysFile .ssh/authorized_keys\nPubkeyAuthentication yes\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin no\n"
                "UsePAM no\nUseDNS no\nStrictModes yes\nPrintMotd no\nPrintLastLog no\n"
                "X11Forwarding no\nLogLevel VERBOSE\nSubsystem sftp internal-sftp\n"
                f"SetEnv {setenv}\n")

    def _start_sshd(self) -> int:
        """Start sshd in the foreground as the lab's child; returns the log offset to watch."""
        (self.sys_dir / "sshd_config").write_text(self._sshd_config())
        offset = self.sshd_log.stat().st_size if self.sshd_log.exists() else 0
        self._sshd = subprocess.Popen(
            [tool("nsenter"), f"--net=/run/netns/{self.ns}", "--", tool("sshd"), "-D",
             "-f", str(self.sys_dir / "sshd_config"), "-E", str(self.sshd_log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return offset

    def _await_sshd(self, offset: int, timeout: float = 10) -> None:
        """Wait for sshd's "Server listening" line after ``offset`` in its log."""
        deadline = time.monotonic() + timeout
        while self._sshd is not None and self._sshd.poll() is None:
            with contextlib.suppress(OSError), self.sshd_log.open("rb") as f:
                f.seek(offset)
                if b"Server listening on" in f.read():
                    return
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)
        raise LabError(f"{self.name}: sshd did not start:\n{self.log_tail(self.sshd_log)}")

    def sshd_pid(self) -> int | None:
        """Pid of this host's sshd listener, or None when it is not running."""
        return self._sshd.pid if self._sshd is not None and self._sshd.poll() is None else None

    def _stop_sshd(self) -> None:
        if self._sshd is not None:
            if self._sshd.poll() is None:
                self._sshd.terminate()
            self._sshd.wait(timeout=10)
            self._sshd = None

    def restart_sshd(self) -> None:
        self._stop_sshd()
        self._await_sshd(self._start_sshd())


# -- the lab -------------------------------------------------------------------------------
class Lab:
    """N hosts ``a``, ``b``, ... as a context manager; see the module docstring.

    ``root_dir`` holds one directory per run (homes, sshd configs and logs), removed on exit
    unless ``keep_files`` (or ``MLAB_KEEP=1``).  The default, /tmp/mlab, is reachable by the
    lab users; a root_dir behind a 0700 directory gets ACL entries instead (not pytest's
    tmp_path: every pytest session start chmods /tmp/pytest-of-<user> and so voids them).
    ``env`` is added to every host's environment (also for sessions sshd starts).
    ``python`` is the interpreter hosts run meshd with: the test's venv by default.
    """

    def __init__(self, n: int = 3, root_dir: Path | str = DEFAULT_ROOT, *,
                 env: dict[str, str] | None = None, keep_files: bool | None = None,
                 python: str | None = None) -> None:
        if not 1 <= n <= MAX_HOSTS:
            raise ValueError(f"1 <= n <= {MAX_HOSTS}")
        self.run = secrets.token_hex(3)
        self.dir = Path(root_dir).resolve() / self.run
        self.python = python or sys.executable
        self.user_path = f"{Path(self.python).parent}:/usr/local/bin:/usr/bin:/bin"
        self.extra_env = dict(env or {})
        self.key_options = ""  # authorized_keys options for peers' keys; see set_key_options
        self.keep_files = (os.environ.get("MLAB_KEEP") == "1") if keep_files is None else keep_files
        self.hosts = {h.name: h for h in (Host(self, i) for i in range(1, n + 1))}
        self.bridge_ns = f"{PREFIX}{self.run}-br"
        self.children: list[subprocess.Popen[Any]] = []
        self.timings: dict[str, float] = {}
        self._drops: set[tuple[str, str]] = set()
        self._loss: dict[str, int] = {}
        self._rules: dict[str, str] = {}
        self._state: dict[str, Any] = {}
        self._closed = False
        sock = self.hosts["a"].agents_dir / "meshd" / "meshd.sock"
        if len(str(sock)) > SOCKET_PATH_MAX - 2:
            raise LabError(f"root_dir too deep: {sock} would exceed the Unix socket path limit")

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts.values())

    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(raise_errors=et is None)

    @property
    def state_file(self) -> Path:
        return STATE_DIR / f"{self.run}.json"

    # lifecycle
    def start(self) -> None:
        """Build everything; on any failure remove what was built and re-raise."""
        t0 = time.monotonic()
        sweep_leftovers()
        self._state = {"run": self.run, "pid": os.getpid(), "pid_start": _proc_start(os.getpid()),
                       "dir": str(self.dir), "keep_files": self.keep_files,
                       "namespaces": [self.bridge_ns, *(h.ns for h in self)],
                       "users": [{"name": h.user, "uid": None} for h in self], "acl": []}
        self._save()
        try:
            self._step("network", self._build_network)
            self._step("users", self._build_users)
            self._step("access", self._grant_access)
            self._step("ssh", self._build_ssh)
        except BaseException:
            self.close(raise_errors=False)
            raise
        self.timings["total"] = time.monotonic() - t0

    def close(self, raise_errors: bool = True) -> None:
        """Remove everything (idempotent).  Raises LabError listing what could not be removed."""
        if self._closed or not self._state:
            return
        self._closed = True
        self._reap_children()
        errors = teardown(self._state)
        for h in self:  # killed by teardown; reap them so no zombie stays behind
            with contextlib.suppress(subprocess.TimeoutExpired):
                h._stop_sshd()
        if not errors:
            self.state_file.unlink(missing_ok=True)
        if errors and raise_errors:
            raise LabError(f"lab {self.run} cleanup: " + "; ".join(errors))

    def reset(self) -> None:
        """Back to a fresh lab, fast: heal, kill every user process (meshd, tmux, ssh, links),
        wipe ``~/.agents`` and ``~/.agent-inbox`` (self.conf/peers.conf rewritten), trust the
        current host keys again and make sure every sshd runs."""
        self.heal()
        self._reap_children()
        errors = _kill_all([], [h.uid for h in self])
        if errors:
            raise LabError("; ".join(errors))
        for h in self:
            shutil.rmtree(h.agents_dir, ignore_errors=True)
            shutil.rmtree(h.home / ".agent-inbox", ignore_errors=True)
            h.tmux_socket.unlink(missing_ok=True)
            h._write_mesh_state()
            h._write_ssh_client()
            if h.sshd_pid() is None:
                h.restart_sshd()

    def _step(self, name: str, fn: Any) -> None:
        t = time.monotonic()
        fn()
        self.timings[name] = time.monotonic() - t

    def _save(self) -> None:
        STATE_DIR.mkdir(mode=0o700, exist_ok=True)
        _write_json(self.state_file, self._state)

    def _reap_children(self) -> None:
        for p in self.children:
            if p.poll() is None:
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
        self.children.clear()

    def _build_network(self) -> None:
        br = self.bridge_ns
        _sh(["ip", "netns", "add", br])
        _sh(["ip", "-n", br, "link", "add", "br0", "type", "bridge"])
        _sh(["ip", "-n", br, "link", "set", "br0", "up"])
        for h in self:
            _sh(["ip", "netns", "add", h.ns])
            _sh(["ip", "-n", br, "link", "add", f"port-{h.name}", "type", "veth",
                 "peer", "name", "eth0", "netns", h.ns])
            _sh(["ip", "-n", br, "link", "set", f"port-{h.name}", "master", "br0", "up"])
            _sh(["ip", "-n", h.ns, "addr", "add", f"{h.addr}/24", "dev", "eth0"])
            _sh(["ip", "-n", h.ns, "link", "set", "eth0", "up"])
            _sh(["ip", "-n", h.ns, "link", "set", "lo", "up"])

    def _build_users(self) -> None:
        root = self.dir.parent
        if root == DEFAULT_ROOT:
            root.mkdir(mode=0o755, exist_ok=True)
            if root.is_symlink() or root.stat().st_uid != 0:
                raise LabError(f"{root} must be a directory owned by root")
            os.chmod(root, 0o755)
        self.dir.mkdir(mode=0o755, parents=True)
        os.chmod(self.dir, 0o755)
        for h in self:
            for attempt in range(20):  # useradd fails while another run holds /etc/passwd's lock
                r = _sh(["useradd", "-M", "-U", "-d", str(h.home), "-s", "/bin/bash", "-p", "*",
                         "-c", f"meshd lab {self.run}", h.user], check=False)
                if r.returncode == 0:
                    break
                if attempt == 19 or "lock" not in r.stderr:
                    raise LabError(f"useradd {h.user}: {r.stderr.strip()}")
                time.sleep(0.1)
            pw = pwd.getpwnam(h.user)
            h.uid, h.gid = pw.pw_uid, pw.pw_gid
            self._state["users"][h.index - 1]["uid"] = h.uid
            self._save()
            h.home.mkdir(mode=0o700)
            os.chown(h.home, h.uid, h.gid)
            h.sys_dir.mkdir(mode=0o700)
            h._write_mesh_state()

    def _grant_access(self) -> None:
        """Let the users reach the venv, its interpreter, the source tree and their homes.

        A pyenv interpreter under /root (0700) or pytest's /tmp/pytest-of-root (0700) would
        be out of their reach: such directories get an ACL entry ``u:<uid>:x`` (traverse
        only, no listing) per lab user, removed at exit.  Then one host proves it can import
        meshd."""
        import meshd

        targets = [Path(self.python), Path(os.path.realpath(self.python)), Path(sys.base_prefix),
                   Path(meshd.__file__).resolve().parent, Path(__file__).resolve().parent, self.dir]
        dirs = blocked_dirs(targets)
        self._state["acl"] = [str(d) for d in dirs]
        self._save()
        _grant(dirs, [h.uid for h in self])
        probe = self.hosts["a"].python("-c", "import meshd.cli.mesh_main, asyncssh")
        if probe.returncode != 0:
            raise LabError(f"lab user cannot run {self.python}: {probe.stderr.strip()}\n"
                           "(files under it must be world-readable)")

    def _build_ssh(self) -> None:
        keygen = tool("ssh-keygen")
        jobs = []
        for h in self:
            (h.home / ".ssh").mkdir(mode=0o700)
            os.chown(h.home / ".ssh", h.uid, h.gid)
            jobs.append(subprocess.Popen([keygen, "-q", "-t", "ed25519", "-N", "", "-C",
                                          f"{h.name}-host-{self.run}", "-f", str(h.host_key)]))
            jobs.append(subprocess.Popen([keygen, "-q", "-t", "ed25519", "-N", "", "-C",
                                          f"{h.user}@{h.name}", "-f",
                                          str(h.home / ".ssh/id_ed25519")]))
        if any(j.wait() != 0 for j in jobs):
            raise LabError("ssh-keygen failed")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        for h in self:
            for f in ("id_ed25519", "id_ed25519.pub"):
                os.chown(h.home / ".ssh" / f, h.uid, h.gid)
            h._write_ssh_client()
        offsets = [(h, h._start_sshd()) for h in self]
        for h, offset in offsets:
            h._await_sshd(offset)

    # faults -------------------------------------------------------------------------------
    def _h(self, x: str | Host) -> Host:
        return x if isinstance(x, Host) else self.hosts[x]

    def partition(self, a: str | Host, b: str | Host) -> None:
        """Drop all traffic between ``a`` and ``b``, both ways."""
        self._drop([(a, b), (b, a)])

    def partition_oneway(self, src: str | Host, dst: str | Host) -> None:
        """Drop packets from ``src`` to ``dst`` only (so TCP fails both ways, UDP one way)."""
        self._drop([(src, dst)])

    def blackhole(self, name: str | Host, *peers: str | Host) -> None:
        """Silently drop everything between ``name`` and ``peers`` (default: every other host)."""
        h = self._h(name)
        others = [self._h(p) for p in peers] or h.peers
        self._drop([(h, p) for p in others] + [(p, h) for p in others])

    def isolate(self, name: str | Host) -> None:
        """Cut ``name`` off from every other host, both ways (its loopback still works)."""
        self.blackhole(name)

    def split(self, *groups: Iterable[str | Host]) -> None:
        """Partition into ``groups``: traffic flows only within a group."""
        sets = [{self._h(x).name for x in g} for g in groups]
        self._drop([(a, b) for i, g in enumerate(sets) for a in g
                    for j, other in enumerate(sets) if i != j for b in other])

    def loss(self, percent: int, *names: str | Host) -> None:
        """Drop ``percent`` % of the packets ``names`` (default all) receive from peers."""
        for x in names or list(self.hosts):
            self._loss[self._h(x).name] = percent
        self._apply()

    def heal(self) -> None:
        """Remove every drop and loss rule."""
        self._drops.clear()
        self._loss.clear()
        self._apply()

    def drops(self) -> set[tuple[str, str]]:
        """Directed (src, dst) pairs currently dropped."""
        return set(self._drops)

    def _drop(self, pairs: Iterable[tuple[str | Host, str | Host]]) -> None:
        self._drops |= {(self._h(s).name, self._h(d).name) for s, d in pairs}
        self._apply()

    def _apply(self) -> None:
        """Rewrite the ``inet mlab`` table of each host whose rules changed, atomically."""
        for h in self:
            srcs = sorted(self.hosts[s].addr for s, d in self._drops if d == h.name)
            rules = []
            if srcs:
                rules.append(f'iifname "eth0" ip saddr {{ {", ".join(srcs)} }} drop')
            if self._loss.get(h.name):
                rules.append(f'iifname "eth0" numgen random mod 100 < {self._loss[h.name]} drop')
            script = ("table inet mlab\ndelete table inet mlab\n" + (
                "table inet mlab {\n chain input {\n  type filter hook input priority -10; "
                "policy accept;\n" + "".join(f"  {r}\n" for r in rules) + " }\n}\n"
                if rules else ""))
            if self._rules.get(h.name, "table inet mlab\ndelete table inet mlab\n") != script:
                h.run_root(["nft", "-f", "-"], input=script)
                self._rules[h.name] = script

    # host keys ----------------------------------------------------------------------------
    def rekey(self, name: str | Host) -> None:
        """Give ``name`` a new host key and restart its sshd; known_hosts stay as they were,
        so peers must refuse it (until :meth:`trust_host_keys` or :meth:`reset`)."""
        h = self._h(name)
        h.host_key.unlink()
        Path(f"{h.host_key}.pub").unlink()
        _sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{h.name}-rekeyed",
             "-f", str(h.host_key)])
        h.restart_sshd()

    def trust_host_keys(self) -> None:
        """Rewrite every user's known_hosts with the current host keys."""
        for h in self:
            h._write_ssh_client()

    def set_key_options(self, options: str) -> None:
        """Prefix every authorized_keys line with ``options`` (e.g. ``restrict,command="meshd
        link"`` for S2); ``""`` restores plain keys.  :meth:`reset` keeps the options."""
        self.key_options = options
        self.trust_host_keys()

    def diagnostics(self) -> str:
        """Tails of every sshd and meshd log, for a failing test's message."""
        return "\n".join(f"--- {h.name} {p.name}\n{h.log_tail(p, 15)}"
                         for h in self for p in (h.sshd_log, h.meshd_log) if p.exists())
