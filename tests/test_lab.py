"""Tests of the lab harness itself (tests/lab.py): hosts, users, SSH, faults, cleanup.

One 3-host lab is shared by the module (``lab3`` resets it before each test); the cleanup
tests build their own small labs.  Without root, netns, sshd or nft the lab tests skip and say
why; under ``CI=true`` they fail instead.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import lab as labmod
import pytest
from lab import STATE_DIR, Lab, LabError, need_lab

FAST_FAIL = ("-o", "ConnectTimeout=1")

ASYNCSSH_PROBE = """
import asyncio, sys, asyncssh
async def main():
    try:
        async with asyncssh.connect(sys.argv[1], connect_timeout=5) as conn:
            print((await conn.run("id -un", check=True)).stdout.strip())
    except asyncssh.HostKeyNotVerifiable as exc:
        print("host key refused:", exc.reason)
        sys.exit(3)
asyncio.run(main())
"""

UDP_RECEIVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 9999)); s.settimeout(20)
print("ready", flush=True)
n = 0
try:
    while True:
        s.recv(100); n += 1
        s.settimeout(1)  # idle for 1 s after the first datagram: the sender is done
except TimeoutError:
    print(n)
"""

UDP_SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(1000):
    s.sendto(b"x", (sys.argv[1], 9999))
    if i % 5 == 0: time.sleep(0.001)  # gentle enough that the receive buffer never fills
"""


@pytest.fixture(scope="module")
def lab_shared() -> Iterator[Lab]:
    need_lab()
    with Lab(3) as lab:
        yield lab


@pytest.fixture
def lab3(lab_shared: Lab) -> Lab:
    lab_shared.reset()
    return lab_shared


def _blocked(lab: Lab, src: str, dst: str) -> bool:
    """ssh src -> dst times out (1 s connect timeout); any other failure is an error."""
    r = lab[src].ssh(dst, "true", options=FAST_FAIL, timeout=20)
    assert r.returncode == 0 or "timed out" in r.stderr, f"{src}->{dst}: {r.stderr}"
    return r.returncode != 0


def _open(lab: Lab, src: str, dst: str) -> bool:
    """ssh src -> dst works, within the config's 3 s connect timeout (ample on a busy box)."""
    r = lab[src].ssh(dst, "true", timeout=20)
    assert r.returncode == 0, f"{src}->{dst}: {r.stderr}\n{lab.diagnostics()}"
    return True


# -- skip logic (runs everywhere, root or not) ---------------------------------------------
def test_need_lab_skips_with_the_reason_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(labmod, "requires_lab", lambda: "the lab needs nft (nftables)")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs nft"):
        need_lab()


def test_need_lab_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(labmod, "requires_lab", lambda: "the lab needs nft (nftables)")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"missing in CI.*needs nft"):
        need_lab()


def test_requires_lab_names_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "root" in (labmod.requires_lab.__wrapped__() or "")


# -- the lab -------------------------------------------------------------------------------
def test_three_hosts_up(lab3: Lab) -> None:
    assert [h.name for h in lab3] == ["a", "b", "c"]
    assert lab3.timings["total"] < 10, lab3.timings
    for h in lab3:
        assert Path(f"/run/netns/{h.ns}").exists()
        assert f"inet {h.addr}/24" in h.run_root(["ip", "-o", "addr", "show", "eth0"]).stdout
        assert h.sshd_pid() is not None
        assert (h.agents_dir / "self.conf").read_text() == f"{h.name}\n"
    assert (lab3["a"].agents_dir / "peers.conf").read_text() == "a\nb\nc\n"
    assert (lab3["c"].agents_dir / "peers.conf").read_text() == "a\nb\nc\n"
    assert len({h.uid for h in lab3}) == 3


def test_ssh_between_every_pair_as_the_peers_user(lab3: Lab) -> None:
    for src, dst in itertools.permutations(lab3, 2):
        r = src.ssh(dst, "id -u; id -un; echo $MESHD_HOST; command -v meshd")
        assert r.returncode == 0, f"{src.name}->{dst.name}: {r.stderr}\n{lab3.diagnostics()}"
        uid, user, host, meshd = r.stdout.split()
        assert (int(uid), user, host) == (dst.uid, dst.user, dst.name)
        assert meshd == str(Path(lab3.python).parent / "meshd")
    assert lab3["a"].run(["id", "-u"]).stdout.strip() == str(lab3["a"].uid)


def test_asyncssh_connects_by_alias_with_the_users_config(lab3: Lab) -> None:
    r = lab3["a"].python("-c", ASYNCSSH_PROBE, "b")
    assert (r.returncode, r.stdout.strip()) == (0, lab3["b"].user), r.stderr


def test_changed_host_key_is_refused(lab3: Lab) -> None:
    lab3.rekey("c")
    r = lab3["a"].ssh("c", "true")
    assert r.returncode == 255 and "Host key verification failed" in r.stderr, r.stderr
    r = lab3["b"].python("-c", ASYNCSSH_PROBE, "c")
    assert r.returncode == 3 and "host key refused" in r.stdout, r.stdout + r.stderr
    assert lab3["c"].ssh("a", "true").returncode == 0
    lab3.trust_host_keys()
    assert lab3["a"].ssh("c", "true").returncode == 0


def test_partition_and_heal(lab3: Lab) -> None:
    lab3.partition("a", "b")
    assert lab3.drops() == {("a", "b"), ("b", "a")}
    assert _blocked(lab3, "a", "b")
    assert _blocked(lab3, "b", "a")
    assert _open(lab3, "a", "c") and _open(lab3, "c", "b")
    lab3.heal()
    assert _open(lab3, "a", "b") and _open(lab3, "b", "a")


def test_oneway_partition_drops_at_the_receiver_only(lab3: Lab) -> None:
    lab3.partition_oneway("a", "b")
    assert "10.231.0.11" in lab3["b"].run_root(["nft", "list", "ruleset"]).stdout
    assert lab3["a"].run_root(["nft", "list", "ruleset"]).stdout.strip() == ""
    assert _blocked(lab3, "a", "b")
    assert _open(lab3, "c", "b")


def test_isolate(lab3: Lab) -> None:
    lab3.isolate("c")
    assert _blocked(lab3, "a", "c")
    assert _blocked(lab3, "c", "b")
    assert _open(lab3, "a", "b")
    own = lab3["c"].python("-c", f"import socket; socket.create_connection(('{lab3['c'].addr}', 22), 2)")
    assert own.returncode == 0, own.stderr  # its own address still answers
    lab3.heal()
    assert _open(lab3, "c", "a")


def test_loss_drops_about_that_share(lab3: Lab) -> None:
    lab3.loss(30, "b")
    rx = lab3["b"].popen([lab3.python, "-c", UDP_RECEIVER, lab3["b"].addr],
                         stdout=subprocess.PIPE, text=True)
    assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
    lab3["a"].python("-c", UDP_SENDER, lab3["b"].addr, check=True)
    received = int(rx.stdout.read())
    assert 550 <= received <= 850, received  # expected 700 of 1000; sd 14.5


def test_split_and_blackhole_drop_the_right_pairs(lab3: Lab) -> None:
    lab3.split(["a"], ["b", "c"])
    assert lab3.drops() == {("a", "b"), ("b", "a"), ("a", "c"), ("c", "a")}
    lab3.heal()
    lab3.blackhole("b", "c")
    assert lab3.drops() == {("b", "c"), ("c", "b")}
    assert _blocked(lab3, "c", "b")
    assert _open(lab3, "a", "b")


def test_key_options_force_a_command(lab3: Lab) -> None:
    lab3.set_key_options('restrict,command="echo forced"')
    try:
        assert lab3["a"].ssh("b", "id -un").stdout.strip() == "forced"
    finally:
        lab3.set_key_options("")
    assert lab3["a"].ssh("b", "id -un").stdout.strip() == lab3["b"].user


def test_meshd_runs_on_a_lab_host(lab3: Lab) -> None:
    a = lab3["a"]
    a.new_window("shell", "bash --norc --noprofile")
    status = a.start_meshd()
    assert status["running"] and status["host"] == "a", status
    r = a.mesh("status", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["pid"] == a.meshd_pid(), r.stderr
    assert isinstance(a.agents(), list)
    pid = a.kill_meshd()
    deadline = time.monotonic() + 5
    while a.meshd_pid() is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert a.meshd_pid() is None, pid


def test_reset_returns_to_a_fresh_lab(lab3: Lab) -> None:
    b = lab3["b"]
    b.start_meshd()
    b.new_window("shell", "sleep 600")
    lab3.partition("a", "b")
    lab3.reset()
    assert lab3.drops() == set()
    assert labmod._lab_pids([], [h.uid for h in lab3]) == set()
    assert sorted(p.name for p in b.agents_dir.iterdir()) == ["peers.conf", "self.conf"]
    assert _open(lab3, "a", "b")


# -- cleanup -------------------------------------------------------------------------------
def _traces(run: str, users: list[str]) -> list[str]:
    """What is left of a lab run: namespaces, users, processes, state file."""
    left = [f"netns {n}" for n in os.listdir("/run/netns") if n.startswith(f"mlab-{run}-")]
    for u in users:
        with contextlib.suppress(KeyError):
            left.append(f"user {u} (uid {pwd.getpwnam(u).pw_uid})")
    if (STATE_DIR / f"{run}.json").exists():
        left.append("state file")
    return left


def _root_net() -> tuple[list[str], str]:
    """Interface names and nft rules of the root namespace."""
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    rules = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    return sorted(line.split(":")[1].strip() for line in links.splitlines()), rules


def _acl(path: Path) -> tuple[int, list[str]]:
    return os.stat(path).st_mode, sorted(os.listxattr(path))


@pytest.fixture
def locked_root() -> Iterator[Path]:
    """A root_dir behind a 0700 directory, so the lab must grant its users ACL entries."""
    need_lab()
    labmod.DEFAULT_ROOT.mkdir(mode=0o755, exist_ok=True)
    root = labmod.DEFAULT_ROOT / f"locked-{os.getpid()}"
    root.mkdir(mode=0o700)
    try:
        yield root / "inner"
    finally:
        shutil.rmtree(root)


def test_everything_is_removed_on_exit(locked_root: Path) -> None:
    watched = labmod.blocked_dirs([locked_root.parent, Path(os.path.realpath(sys.executable))])
    assert locked_root.parent in watched
    before = {d: _acl(d) for d in watched}
    root_net = _root_net()
    with Lab(2, locked_root) as lab:
        assert _root_net() == root_net  # the root namespace's networking is never touched
        assert {str(d) for d in watched} <= set(lab._state["acl"])
        lab["a"].start_meshd()
        lab["b"].new_window("w", "sleep 600")
        pids = [h.sshd_pid() for h in lab] + [lab["a"].meshd_pid()]
        uids, users, run = [h.uid for h in lab], [h.user for h in lab], lab.run
    assert _traces(run, users) == []
    assert not any(labmod._alive(p) for p in pids if p), pids
    assert labmod._lab_pids([], uids) == set()
    assert not (locked_root / run).exists()
    assert {d: _acl(d) for d in watched} == before
    assert _root_net() == root_net


def test_removed_after_a_failing_test_too() -> None:
    need_lab()
    with pytest.raises(RuntimeError, match="boom"), Lab(1) as lab:
        run, users = lab.run, [lab["a"].user]
        raise RuntimeError("boom")
    assert _traces(run, users) == []


def test_leftovers_of_a_dead_owner_are_swept_live_runs_kept(lab_shared: Lab) -> None:
    crashed = Lab(1)
    crashed.start()
    try:
        dead = subprocess.Popen(["true"])
        dead.wait()
        state = json.loads(crashed.state_file.read_text())
        state["pid"] = dead.pid  # as if the owner had been SIGKILLed
        crashed.state_file.write_text(json.dumps(state))
        assert crashed.run in labmod.sweep_leftovers()
        assert _traces(crashed.run, [crashed["a"].user]) == []
        assert not crashed.dir.exists()
        assert Path(f"/run/netns/{lab_shared['a'].ns}").exists()  # a live run is left alone
        assert lab_shared.run not in labmod.sweep_leftovers()
    finally:
        crashed.close()  # after the sweep: nothing left to do, no error


def test_root_dir_too_deep_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="socket path"):
        Lab(1, tmp_path / ("x" * 90))
