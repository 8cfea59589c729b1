"""notify-pane end to end: exact bytes, exit codes, files, injection, degraded mode."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest
from conftest import Mesh, rawreader_cmd

START, END = b"\x1b[200~", b"\x1b[201~"
TAG = re.compile(rb"\[from [^\]]+ @ \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\] ")


def reader(m: Mesh, name: str = "reader") -> tuple[str, Path]:
    log = m.root / f"{name}.log"
    log.touch()
    pane = m.new_window(name, rawreader_cmd(log))
    m.wait_for(pane, ">")
    m.run("mesh", "hook", "on", "$0")
    return pane, log


def received(log: Path, n: int = 1, timeout: float = 10) -> list[bytes]:
    """The bodies of the first ``n`` submitted pastes in a rawreader log."""
    deadline = time.monotonic() + timeout
    pat = re.compile(re.escape(START) + b"(.*?)" + re.escape(END) + b"\r", re.DOTALL)
    while True:
        data = log.read_bytes()
        got = pat.findall(data)
        if len(got) >= n:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(got)}/{n} messages arrived; log: {data[-400:]!r}")
        time.sleep(0.02)


def body(raw: bytes) -> bytes:
    assert TAG.match(raw), raw[:80]
    return TAG.sub(b"", raw, count=1)


def test_delivers_exact_text_and_one_submit(live_mesh: Mesh) -> None:
    m = live_mesh
    pane, log = reader(m)
    r = m.run("notify-pane", "testhost-main-reader", "hello world")
    assert r.returncode == 0, r.stderr
    assert "delivered" in r.stdout
    assert body(received(log)[0]) == b"hello world"
    m.wait_for(pane, "<< SUBMIT 1 >>")
    assert "SUBMIT 2" not in m.capture(pane)
    assert m.tmux.run("list-buffers", "-F", "#{buffer_name}").strip() == ""


@pytest.mark.parametrize("payload,expected", [
    ("ends with semicolon;", b"ends with semicolon;"),
    ("escaped \\;", b"escaped \\;"),
    ("part1; set-option -g @pwned yes", b"part1; set-option -g @pwned yes"),
    ("Enter", b"Enter"),
    ("C-c", b"C-c"),
    ("-----BEGIN KEY-----", b"-----BEGIN KEY-----"),
    ("x\x1b[201~\ntouch /tmp/pwn", b"x\rtouch /tmp/pwn"),
    ("bell\x07 osc\x1b]52;c;Zm9v\x07 end", b"bell osc end"),
    ("two\nlines", b"two\rlines"),
])
def test_no_tmux_command_or_control_gets_through(live_mesh: Mesh, payload: str,
                                                 expected: bytes) -> None:
    m = live_mesh
    _, log = reader(m)
    r = m.run("notify-pane", "testhost-main-reader", payload)
    assert r.returncode == 0, r.stderr
    got = body(received(log)[0])
    assert got == expected
    assert b"\x1b" not in got
    assert m.tmux.run("show-options", "-gqv", "@pwned").strip() == ""
    assert m.tmux.run("list-buffers", "-F", "#{buffer_name}").strip() == ""


def test_exit_codes(live_mesh: Mesh, tmp_path: Path) -> None:
    m = live_mesh
    reader(m)
    assert m.run("notify-pane").returncode == 1
    assert m.run("notify-pane", "--bogus").returncode == 1
    r = m.run("notify-pane", "testhost-main-nobody", "hi")
    assert r.returncode == 2 and "unknown agent" in r.stderr
    r = m.run("notify-pane", "testhost-main-reader", "--file", str(tmp_path / "missing"))
    assert r.returncode == 1 and "cannot read" in r.stderr


def test_file_goes_to_inbox_without_overwrite(live_mesh: Mesh, tmp_path: Path) -> None:
    m = live_mesh
    _, log = reader(m)
    src = tmp_path / "notes.md"
    src.write_text("first")
    assert m.run("notify-pane", "testhost-main-reader", "--file", str(src), "see this").returncode == 0
    src.write_text("second")
    assert m.run("notify-pane", "testhost-main-reader", "--file", str(src)).returncode == 0
    inbox = Path(m.env["HOME"]) / ".agent-inbox"
    files = sorted(p.read_text() for p in inbox.rglob("notes*.md"))
    assert files == ["first", "second"]
    first, second = received(log, 2)
    assert b"see this [file: " in first and b"notes.md]" in first
    assert b"notes.1.md]" in second


def test_copy_mode_and_dead_pane_are_refused_not_dropped(live_mesh: Mesh) -> None:
    m = live_mesh
    pane, log = reader(m)
    m.tmux.run("copy-mode", "-t", pane)
    r = m.run("notify-pane", "testhost-main-reader", "while in copy mode")
    assert r.returncode == 3 and "copy-mode" in r.stderr
    assert START not in log.read_bytes()
    m.tmux.run("send-keys", "-t", pane, "-X", "cancel")
    r = m.run("notify-pane", "--wait=5", "testhost-main-reader", "after copy mode")
    assert r.returncode == 0, r.stderr
    assert body(received(log)[0]) == b"after copy mode"
    inbox = json.loads(m.run("mesh", "inbox", "--json", "testhost-main-reader").stdout)
    assert [e["kind"] for e in inbox] == ["msg.refused", "msg.delivered"]


def test_whoami_and_list(live_mesh: Mesh) -> None:
    m = live_mesh
    pane, _ = reader(m)
    env = {"TMUX": f"{m.tmux.socket},1,0", "TMUX_PANE": pane}
    r = m.run("notify-pane", "--whoami", env=env)
    assert r.returncode == 0 and r.stdout.strip() == "testhost-main-reader"
    listing = m.run("notify-pane", "--list")
    assert "testhost-main-reader" in listing.stdout and "testhost-main-shell" in listing.stdout
    shell_pane = m.tmux.run("list-panes", "-t", "main:shell", "-F", "#{pane_id}").strip()
    r = m.run("notify-pane", "testhost-main-reader", "ping", env={"TMUX": env["TMUX"],
                                                               "TMUX_PANE": shell_pane})
    assert r.returncode == 0
    assert b"[from testhost-main-shell @" in received(m.root / "reader.log")[0]


def test_concurrent_senders_never_interleave(live_mesh: Mesh) -> None:
    m = live_mesh
    _, log = reader(m)
    results: list[int] = []

    def sender(i: int) -> None:
        for k in range(3):
            r = m.run("notify-pane", "testhost-main-reader", f"sender{i}-msg{k}-" + "x" * 200)
            results.append(r.returncode)

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [0] * 30
    got = [body(b).decode() for b in received(log, 30)]
    assert sorted(got) == sorted(f"sender{i}-msg{k}-" + "x" * 200 for i in range(10) for k in range(3))
    for i in range(10):  # per-sender order preserved
        mine = [g for g in got if g.startswith(f"sender{i}-")]
        assert mine == sorted(mine)
    assert m.tmux.run("list-buffers", "-F", "#{buffer_name}").strip() == ""


def test_degraded_delivery_without_daemon_is_journaled_later(mesh: Mesh) -> None:
    m = mesh
    m.new_window("shell", "bash --norc")
    _, log = reader(m)
    r = m.run("notify-pane", "testhost-main-reader", "no daemon here")
    assert r.returncode == 0, r.stderr
    assert "not running" in r.stderr
    assert body(received(log)[0]) == b"no daemon here"
    assert m.run("notify-pane", "testhost-main-ghost", "x").returncode == 2
    m.start_daemon()
    inbox = json.loads(m.run("mesh", "inbox", "--json").stdout)
    delivered = [e for e in inbox if e["kind"] == "msg.delivered"]
    assert delivered and delivered[0]["body"]["degraded"] is True


def test_large_message_via_stdin(live_mesh: Mesh) -> None:
    m = live_mesh
    _, log = reader(m)
    text = ("0123456789abcdef" * 64 + "\n") * 300  # ~300 KB, many lines
    r = m.run("notify-pane", "testhost-main-reader", "-", input=text.encode())
    assert r.returncode == 0, r.stderr
    got = body(received(log, timeout=30)[0])
    assert got == text.rstrip("\n").replace("\n", "\r").encode()
