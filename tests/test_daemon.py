"""The daemon on one host: lifecycle, signals, discovery, registry files, journal."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from conftest import Mesh


def agents(m: Mesh) -> list[dict]:  # type: ignore[type-arg]
    r = m.run("mesh", "agents", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def wait_agents(m: Mesh, pred, timeout: float = 5.0) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    deadline = time.monotonic() + timeout
    while True:
        got = agents(m)
        if pred(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met; agents: {json.dumps(got, indent=1)}")
        time.sleep(0.05)


def pid_of(m: Mesh) -> int:
    return int(json.loads(m.run("mesh", "status", "--json").stdout)["pid"])


def test_up_status_down_and_single_instance(mesh: Mesh) -> None:
    mesh.new_window("one", "bash --norc")
    mesh.start_daemon()
    st = json.loads(mesh.run("mesh", "status", "--json").stdout)
    assert st["running"] and st["host"] == "testhost" and st["agents_local"] == 1
    again = mesh.run("mesh", "up")
    assert again.returncode != 0 and "already running" in again.stderr
    direct = mesh.run("meshd", "run")
    assert direct.returncode != 0 and "already running" in direct.stderr
    assert mesh.run("mesh", "down").returncode == 0
    r = mesh.run("mesh", "status")
    assert r.returncode == 4 and "not running" in r.stdout


def test_sigterm_stops_within_bound(live_mesh: Mesh) -> None:
    pid = pid_of(live_mesh)
    t0 = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    while time.monotonic() - t0 < 10:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.02)
    else:
        raise AssertionError("meshd did not exit within 10 s of SIGTERM")
    assert not (live_mesh.home / "meshd" / "meshd.sock").exists()


def test_bad_config_at_start_exits_78_naming_the_key(mesh: Mesh) -> None:
    mesh.home.mkdir(parents=True)
    (mesh.home / "config.toml").write_text("[delivery]\nenter_retries = 'lots'\n")
    r = mesh.run("meshd", "run", timeout=20)
    assert r.returncode == 78
    assert "delivery.enter_retries" in r.stderr


def test_sighup_with_bad_config_keeps_running_config(live_mesh: Mesh) -> None:
    m = live_mesh
    (m.home / "config.toml").write_text("[discovery]\nrescan_s = 30\n")
    assert m.run("mesh", "reload").returncode == 0
    (m.home / "config.toml").write_text("[discovery\nrescan_s = 30\n")
    os.kill(pid_of(m), signal.SIGHUP)
    time.sleep(0.3)
    bad = m.run("mesh", "reload")
    assert bad.returncode != 0 and "kept" in bad.stderr
    assert m.run("mesh", "status").returncode == 0
    log = (m.home / "meshd" / "meshd.log").read_text()
    assert "config.toml:1" in log and "keeping the running config" in log


def test_discovery_rename_split_and_close(live_mesh: Mesh) -> None:
    m = live_mesh
    pane = m.new_window("Worker One", "bash --norc")
    m.run("mesh", "hook", "on", "$0")
    got = wait_agents(m, lambda a: any(x["address"] == "testhost-main-worker-one" for x in a))
    ident = next(x["id"] for x in got if x["pane"] == pane)
    m.tmux.run("rename-window", "-t", pane, "builder")
    m.run("mesh", "hook", "on", "$0")
    got = wait_agents(m, lambda a: any(x["address"] == "testhost-main-builder" for x in a))
    renamed = next(x for x in got if x["pane"] == pane)
    assert renamed["id"] == ident and "testhost-main-worker-one" in renamed["aliases"]
    r = m.run("mesh", "log", "--json", "-n", "200")
    assert any(e["kind"] == "agent.seen" for e in json.loads(r.stdout))
    # Old address still resolves to the renamed agent.
    r = m.run("notify-pane", "testhost-main-worker-one", "hello")
    assert r.returncode == 0, r.stderr
    m.tmux.run("split-window", "-t", pane, "bash --norc")
    m.run("mesh", "hook", "on", "$0")
    got = wait_agents(m, lambda a: {"testhost-main-builder-0", "testhost-main-builder-1"}
                      <= {x["address"] for x in a})
    m.tmux.run("kill-window", "-t", pane)
    m.run("mesh", "hook", "off", "$0")
    wait_agents(m, lambda a: not any(x["address"].startswith("testhost-main-builder") for x in a))
    reg = tomllib.loads((m.home / "registry.toml").read_text())
    assert "testhost-main-shell" in reg["agents"]
    local = tomllib.loads((m.home / "local.toml").read_text())
    assert set(local["agents"]) == set(reg["agents"])


def test_tool_role_and_scope(live_mesh: Mesh) -> None:
    m = live_mesh
    m.tmux.run("set-option", "-t", "main", "@agent-role", "worker")
    pane = m.new_window("py", f"{sys.executable} -q")
    m.tmux.run("set-option", "-w", "-t", pane, "@agent-role", "architect")
    m.tmux.run("set-option", "-w", "-t", pane, "@agent-scope", "src/")
    m.run("mesh", "resync")
    got = {x["address"]: x for x in agents(m)}
    assert got["testhost-main-py"]["tool"] == "repl"
    assert got["testhost-main-py"]["role"] == "architect"
    assert got["testhost-main-py"]["scope"] == "src/"
    assert got["testhost-main-shell"]["tool"] == "shell"
    assert got["testhost-main-shell"]["role"] == "worker"  # from the session
    first = [x for x in agents(m) if x["architect"]]
    assert len(first) == 1 and first[0]["address"] == "testhost-main-shell"
    for x in agents(m):
        assert {"address", "host", "tool", "role", "state", "architect"} <= set(x)


def test_journal_mirrors_to_audit_and_survives_restart(live_mesh: Mesh) -> None:
    m = live_mesh
    m.new_window("extra", "bash --norc")
    m.run("mesh", "resync")
    events = json.loads(m.run("mesh", "log", "--json", "-n", "1000").stdout)
    audit = [json.loads(x) for x in (m.home / "meshd" / "audit.jsonl").read_text().splitlines()]
    assert {(e["origin"], e["seq"]) for e in events} <= {(e["origin"], e["seq"]) for e in audit}
    gen = json.loads(m.run("mesh", "status", "--json").stdout)["generation"]
    os.kill(pid_of(m), signal.SIGKILL)
    time.sleep(0.2)
    m.start_daemon()
    st = json.loads(m.run("mesh", "status", "--json").stdout)
    assert st["generation"] == gen + 1
    seqs = [e["seq"] for e in json.loads(m.run("mesh", "log", "--json", "-n", "1000").stdout)]
    assert len(seqs) == len(set(seqs))


def test_event_loop_stays_responsive_while_tmux_hangs(live_mesh: Mesh) -> None:
    """A stopped tmux server blocks every tmux call; the API must still answer."""
    m = live_mesh
    server_pid = int(m.tmux.run("display-message", "-p", "#{pid}"))
    os.kill(server_pid, signal.SIGSTOP)
    try:
        hook = subprocess.Popen([sys.executable, "-m", "meshd.cli.mesh_main", "resync"],
                                env=m.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(0.3)
        t0 = time.monotonic()
        r = m.run("mesh", "log", "-n", "1")
        assert r.returncode == 0 and time.monotonic() - t0 < 3
    finally:
        os.kill(server_pid, signal.SIGCONT)
    hook.wait(30)


def test_tmux_hooks_wake_the_daemon(live_mesh: Mesh) -> None:
    """The hook block install.sh writes, loaded into a real tmux server, drives discovery."""
    m = live_mesh
    wrapper = m.root / "mesh-wrapper"
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in m.env.items()
                      if k.startswith("MESHD_") or k in ("HOME", "PATH"))
    wrapper.write_text(f"#!/bin/sh\n{exports}exec {sys.executable} -m meshd.cli.mesh_entry \"$@\"\n")
    wrapper.chmod(0o755)
    block = (Path(__file__).parent.parent / "hooks" / "meshd.tmux.conf").read_text()
    conf = m.root / "hooks.conf"
    conf.write_text(block.replace("@MESH@", shlex.quote(str(wrapper))))
    m.tmux.run("source-file", str(conf))
    (m.home / "config.toml").write_text("[discovery]\nrescan_s = 3600\n")
    m.run("mesh", "reload")
    pane = m.new_window("hooked", "bash --norc")
    wait_agents(m, lambda a: any(x["address"] == "testhost-main-hooked" for x in a), timeout=10)
    m.tmux.run("rename-window", "-t", pane, "renamed")
    wait_agents(m, lambda a: any(x["address"] == "testhost-main-renamed" for x in a), timeout=10)
    m.tmux.run("kill-pane", "-t", pane)
    wait_agents(m, lambda a: not any(x["address"] == "testhost-main-renamed" for x in a), timeout=10)
