"""Locks through a real daemon and real tmux panes: CLI, exit codes, fencing, pane death."""

from __future__ import annotations

import json
import subprocess
import time

from conftest import Mesh


def as_pane(m: Mesh, pane: str) -> dict[str, str]:
    return {"TMUX": f"{m.tmux.socket},1,0", "TMUX_PANE": pane}


def test_lock_lifecycle_between_two_pane_agents(live_mesh: Mesh, tmp_path) -> None:  # type: ignore[no-untyped-def]
    m = live_mesh
    p1 = m.new_window("one", "bash --norc")
    p2 = m.new_window("two", "bash --norc")
    m.run("mesh", "resync")
    target = tmp_path / "src"
    target.mkdir()
    r = m.run("mesh", "lock", "acquire", str(target), "--mode", "intent", "--json", env=as_pane(m, p1))
    assert r.returncode == 0, r.stderr
    grant = json.loads(r.stdout)
    assert {"token", "mode", "target", "holder", "home", "expires_in"} <= set(grant)
    assert grant["holder"] == "testhost-main-one" and grant["target"] == str(target)
    # A file inside the folder conflicts for another agent: exit 3, naming the holder.
    r = m.run("mesh", "lock", "acquire", str(target / "a.py"), "--mode", "write", env=as_pane(m, p2))
    assert r.returncode == 3 and "testhost-main-one" in (r.stderr + r.stdout)
    # READ shares with INTENT.
    assert m.run("mesh", "lock", "acquire", str(target / "b.py"), "--mode", "read",
                 env=as_pane(m, p2)).returncode == 0
    # Upgrade INTENT -> WRITE waits for the reader; release the reader, then it is granted.
    assert m.run("mesh", "lock", "release", str(target / "b.py"), env=as_pane(m, p2)).returncode == 0
    r = m.run("mesh", "lock", "acquire", str(target), "--mode", "write", "--json", env=as_pane(m, p1))
    assert r.returncode == 0, r.stderr
    token = json.loads(r.stdout)["token"]
    assert token > grant["token"]
    assert m.run("mesh", "lock", "check", str(target), "--token", str(token)).returncode == 0
    assert m.run("mesh", "lock", "check", str(target), "--token", str(grant["token"])).returncode != 0
    # A non-owner cannot release it (L5).
    assert m.run("mesh", "lock", "release", str(target), env=as_pane(m, p2)).returncode == 3
    # The holder's pane dies: the lock goes with it, and is journaled.
    m.tmux.run("kill-pane", "-t", p1)
    m.run("mesh", "resync")
    deadline = time.monotonic() + 10
    while m.run("mesh", "lock", "check", str(target), "--token", str(token)).returncode == 0:
        assert time.monotonic() < deadline, "lock outlived its holder's pane"
        time.sleep(0.2)
    kinds = {e["kind"] for e in json.loads(m.run("mesh", "log", "--json", "-n", "500").stdout)}
    assert {"lock.granted", "lock.released"} <= kinds


def test_lock_run_holds_for_the_command_and_passes_the_token(live_mesh: Mesh, tmp_path) -> None:  # type: ignore[no-untyped-def]
    m = live_mesh
    target = tmp_path / "file.txt"
    out = tmp_path / "out"
    r = m.run("mesh", "lock", "run", str(target), "--mode", "write", "--", "sh", "-c",
              f"echo $MESH_LOCK_TOKEN > {out}; exit 7")
    assert r.returncode == 7, r.stderr
    token = int(out.read_text())
    assert token > 0
    assert m.run("mesh", "lock", "check", str(target), "--token", str(token)).returncode != 0
    listing = json.loads(m.run("mesh", "lock", "list", "--json").stdout)
    assert not listing["grants"]


def test_locks_have_one_home_across_hosts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """@names are decided by the anchor, HOST:/path by HOST: requests from other hosts are
    forwarded over the link, and an unreachable home fails (exit 4) instead of granting."""
    from test_replication import agents, link, make, running, until

    a, b = make(tmp_path, "alpha"), make(tmp_path, "beta")
    link(a, b)  # a's peers.conf: beta; b's: alpha (so alpha is b's anchor)
    b.env["MESHD_LINKS_CALL_TIMEOUT_S"] = "1"  # a forwarded --wait must outlast it
    (a.home / "peers.conf").write_text(f"local:{a.home}\nlocal:{b.home}\n")
    with running(a, b):
        pa = a.new_window("one", "bash --norc")
        pb = b.new_window("two", "bash --norc")
        a.start_daemon()
        b.start_daemon()
        until(lambda: "alpha-main-one" in agents(b) and "beta-main-two" in agents(a), what="linked")
        r = b.run("mesh", "lock", "acquire", "@deploy", "--json", env=as_pane(b, pb))
        assert r.returncode == 0, r.stderr
        grant = json.loads(r.stdout)
        assert grant["home"] == "alpha" and grant["holder"] == "beta-main-two"
        r = a.run("mesh", "lock", "acquire", "@deploy", env=as_pane(a, pa))
        assert r.returncode == 3 and "beta-main-two" in r.stderr + r.stdout
        assert a.run("mesh", "lock", "check", "@deploy", "--token", str(grant["token"])).returncode == 0
        # A path on alpha, locked from beta.
        target = f"alpha:{tmp_path}/shared.txt"
        r = b.run("mesh", "lock", "acquire", target, "--json", env=as_pane(b, pb))
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["home"] == "alpha"
        assert a.run("mesh", "lock", "acquire", f"{tmp_path}/shared.txt",
                     env=as_pane(a, pa)).returncode == 3
        # A forwarded wait longer than the link's call timeout: granted on release.
        waiter = subprocess.Popen(
            b.argv("mesh", "lock", "acquire", "@deploy", "--wait", "20", "--as", "beta-waiter",
                   "--json"), env=b.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2.5)
        assert waiter.poll() is None, waiter.communicate()
        assert b.run("mesh", "lock", "release", "@deploy", env=as_pane(b, pb)).returncode == 0
        out, err = waiter.communicate(timeout=15)
        assert waiter.returncode == 0, err
        assert json.loads(out)["token"] > grant["token"]
        # The home goes away: no grant anywhere, exit 4.
        a.stop_daemon()
        until(lambda: agents(b)["alpha-main-one"]["state"] == "unreachable", what="alpha down")
        r = b.run("mesh", "lock", "acquire", "@other", env=as_pane(b, pb))
        assert r.returncode == 4 and "home alpha unreachable" in r.stderr


def test_deadlock_across_two_homes_refuses_exactly_one(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """X holds a path on alpha, Y one on beta; each then waits for the other's, the two
    requests sent at the same instant to different homes.  Neither home sees the cycle
    alone: the request-time check with the other home's edges, or the mesh-wide pass,
    refuses exactly one of them at once, naming the cycle; the other is granted once the
    victim lets go."""
    from test_replication import agents, link, make, running, until

    a, b = make(tmp_path, "alpha"), make(tmp_path, "beta")
    link(a, b)
    with running(a, b):
        a.new_window("one", "bash --norc")
        b.new_window("two", "bash --norc")
        a.start_daemon()
        b.start_daemon()
        until(lambda: "alpha-main-one" in agents(b) and "beta-main-two" in agents(a), what="linked")
        pa, pb = f"alpha:{tmp_path}/a.txt", f"beta:{tmp_path}/b.txt"
        assert a.run("mesh", "lock", "acquire", pa, "--as", "X", "--ttl", "60").returncode == 0
        assert b.run("mesh", "lock", "acquire", pb, "--as", "Y", "--ttl", "60").returncode == 0
        waits = {
            "X": subprocess.Popen(a.argv("mesh", "lock", "acquire", pb, "--as", "X", "--wait", "30"),
                                  env=a.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
            "Y": subprocess.Popen(b.argv("mesh", "lock", "acquire", pa, "--as", "Y", "--wait", "30"),
                                  env=b.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        }
        t0 = time.monotonic()
        until(lambda: any(p.poll() is not None for p in waits.values()), timeout=10, what="a victim")
        detected_s = time.monotonic() - t0
        time.sleep(1.5)  # a second victim would be refused by now
        ended = {h: p for h, p in waits.items() if p.poll() is not None}
        assert len(ended) == 1, {h: p.communicate() for h, p in ended.items()}
        (victim, proc), = ended.items()
        err = proc.communicate()[1]
        assert proc.returncode == 3 and "deadlock" in err and "X" in err and "Y" in err, err
        assert detected_s < 5
        # The victim lets go of what it holds; the survivor is granted.
        mine = {"X": (a, pa), "Y": (b, pb)}[victim]
        assert mine[0].run("mesh", "lock", "release", mine[1], "--as", victim).returncode == 0
        survivor = waits["Y" if victim == "X" else "X"]
        _out, err = survivor.communicate(timeout=15)
        assert survivor.returncode == 0, err
