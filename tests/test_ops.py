"""``mesh tools``, ``mesh doctor`` and ``mesh demo``, run as the CLI against real tmux.

Each CLI test uses the ``mesh`` fixture (conftest): its own tmux server, MESHD_HOME
and HOME under tmp_path; the fixture stops meshd and kills the server afterwards.
The pure pieces (line editor, relay parsing, version parsing) are tested directly.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import Mesh

from meshd.demo import ROLES
from meshd.demo.agent import EOF, PASTE_END, PASTE_START, LineEditor, relay_of
from meshd.doctor import parse_tmux_version
from meshd.toolcatalog import CATALOG, by_name, parse_version, render_argv


# -- pure -----------------------------------------------------------------------------------
def test_line_editor_keeps_newlines_of_a_bracketed_paste() -> None:
    ed = LineEditor()
    echo, done = ed.feed(f"{PASTE_START}one\rtwo{PASTE_END}")
    assert done == [] and "one" in echo
    assert ed.feed("\r") == ("\r\n", ["one\ntwo"])


def test_line_editor_split_escape_backspace_arrows_eof() -> None:
    ed = LineEditor()
    assert ed.feed("\x1b[20") == ("", [])            # half a paste marker waits for the rest
    assert ed.feed("0~x\r\x1b[201~") == ("x\r\n  ", [])
    assert ed.feed("\rab\x7fc\x1b[A\r") == ("\r\nab\b \bc\r\n", ["x\n", "ac"])
    assert ed.feed("\r\n") == ("\r\n", [""])         # CR LF is one Enter
    assert ed.feed("\x04") == ("", [EOF])


def test_relay_of_strips_the_request_so_a_message_hops_once() -> None:
    got = relay_of("builder", "[from h-s-architect @ 2026-01-01T00:00:00Z] round 1: build it; "
                              "please relay to h-s-reviewer.")
    assert got is not None and got.to == "h-s-reviewer"
    assert got.text == "builder relays from h-s-architect: round 1: build it"
    assert relay_of("builder", got.text) is None
    assert relay_of("x", "nothing to forward") is None


@pytest.mark.parametrize(("text", "want"), [
    ("tmux 3.3a", (3, 3)), ("tmux next-3.5", (3, 5)), ("tmux 3.1c", (3, 1)),
    ("tmux master", None)])
def test_parse_tmux_version(text: str, want: tuple[int, int] | None) -> None:
    assert parse_tmux_version(text) == want


def test_catalog_versions_and_argv() -> None:
    assert parse_version("2.0.0 (Claude Code)") == "2.0.0"
    assert parse_version("codex-cli 0.169.0") == "0.169.0"
    assert parse_version("ollama version is 0.5.7") == "0.5.7"
    assert {t.name for t in CATALOG} == {"claude", "codex", "gemini", "aider", "cursor-agent",
                                         "ollama"}
    assert all("{prompt}" in t.headless_argv for t in CATALOG)
    assert render_argv(by_name("ollama"), "hi; rm -rf /", model="llama3") == [
        "ollama", "run", "llama3", "hi; rm -rf /"]


# -- mesh tools -----------------------------------------------------------------------------
def test_tools_json_reports_a_cli_on_path_with_its_version(mesh: Mesh) -> None:
    fake = mesh.root / "fakebin"
    fake.mkdir()
    script = fake / "claude"
    script.write_text('#!/bin/sh\n[ "$1" = --version ] && echo "2.0.0 (Claude Code)"\n')
    script.chmod(0o755)
    r = mesh.run("mesh", "tools", "--json", env={"PATH": f"{fake}:/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    items = json.loads(r.stdout)
    assert [x["name"] for x in items] == [t.name for t in CATALOG]
    for x in items:
        assert set(x) >= {"name", "installed", "path", "version", "headless_argv"}
        assert isinstance(x["headless_argv"], list) and "{prompt}" in x["headless_argv"]
    claude = items[0]
    assert claude["installed"] is True and claude["path"] == str(script)
    assert claude["version"] == "2.0.0"
    assert claude["headless_argv"][:2] == ["claude", "-p"]


# -- mesh doctor ----------------------------------------------------------------------------
def test_doctor_fails_on_an_open_state_dir_and_a_malformed_config(mesh: Mesh) -> None:
    mesh.home.mkdir()
    os.chmod(mesh.home, 0o755)
    (mesh.home / "config.toml").write_text('[daemon]\nlog_level = "info"\nthis is not toml\n')
    r = mesh.run("mesh", "doctor", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    checks = {c["name"]: c for c in json.loads(r.stdout)}
    assert {c["status"] for c in checks.values()} <= {"ok", "warn", "fail"}
    assert checks["state dir"]["status"] == "fail"
    assert "0755" in checks["state dir"]["detail"] and "chmod 700" in checks["state dir"]["fix"]
    assert checks["config"]["status"] == "fail"
    assert "config.toml:3" in checks["config"]["detail"]
    assert checks["tmux"]["status"] == "ok"
    table = mesh.run("mesh", "doctor")
    assert table.returncode == 1 and "✗ state dir" in table.stdout and "fix:" in table.stdout


# -- mesh demo ------------------------------------------------------------------------------
def _wait_received(mesh: Mesh, timeout: float = 10.0) -> dict[str, str]:
    """Each demo window's screen once all of them show a `received:` line."""
    deadline = time.monotonic() + timeout
    while True:
        screens = {role: mesh.capture(f"=mesh-demo:{role}") for role in ROLES}
        if all("received:" in s for s in screens.values()) or time.monotonic() > deadline:
            return screens
        time.sleep(0.1)


def _windows(mesh: Mesh) -> list[str]:
    out = mesh.tmux.run("list-windows", "-t", "=mesh-demo", "-F",
                        "#{window_name} #{@agent-role}")
    return out.split("\n")[:-1]


def test_demo_with_meshd_delivers_and_records(mesh: Mesh) -> None:
    r = mesh.run("mesh", "demo", "--no-attach")
    assert r.returncode == 0, r.stdout + r.stderr
    assert _windows(mesh) == [f"{role} {role}" for role in ROLES]
    screens = _wait_received(mesh)
    for role, screen in screens.items():
        assert "received:" in screen, f"{role}:\n{screen}"
    assert "relays from testhost-mesh-demo-architect" in screens["reviewer"]
    assert "testhost-mesh-demo-builder" in r.stdout and "attach -t mesh-demo" in r.stdout
    deadline = time.monotonic() + 10
    while True:   # the two relays are recorded a moment after the demo returns
        inbox = mesh.run("mesh", "inbox", "--json")
        assert inbox.returncode == 0, inbox.stderr
        delivered = [e for e in json.loads(inbox.stdout) if e["kind"] == "msg.delivered"]
        if len(delivered) >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert {e["body"]["to"] for e in delivered} == {f"testhost-mesh-demo-{x}" for x in ROLES}
    again = mesh.run("mesh", "demo", "--no-attach")
    assert again.returncode == 1 and "already exists" in again.stderr


def test_demo_without_meshd_still_delivers(mesh: Mesh) -> None:
    r = mesh.run("mesh", "demo", "--no-attach", "--no-daemon", "--rounds", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "degraded" in r.stderr and "mesh up" in r.stdout
    screens = _wait_received(mesh)
    for role, screen in screens.items():
        assert "received:" in screen, f"{role}:\n{screen}"
    assert "round 2" in screens["builder"]
    assert not (Path(mesh.env["MESHD_HOME"]) / "meshd" / "meshd.sock").exists()


def test_doctor_sees_the_hooks_in_tmux_and_tmux_conf(mesh: Mesh) -> None:
    mesh.new_window("shell", "sleep 60")
    mesh.home.mkdir(mode=0o700)
    link = Path(mesh.env["HOME"]) / ".local" / "bin" / "mesh"
    hook = (f"set-hook -g session-created[42] "
            f"{{ run-shell -b \"'{link}' hook on '#{{session_id}}'\" }}\n")
    conf = Path(mesh.env["HOME"]) / ".tmux.conf"
    conf.write_text(f"set -g mouse on\n# >>> meshd hooks >>>\n{hook}# <<< meshd hooks <<<\n")
    mesh.tmux.run("source-file", str(conf))
    r = mesh.run("mesh", "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(r.stdout)}
    for name in ("tmux hooks", "tmux.conf", "state dir", "config"):
        assert checks[name]["status"] == "ok", checks[name]
    assert checks["daemon"]["status"] == "fail" and r.returncode == 1
