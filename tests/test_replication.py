"""Two and three meshd daemons linked through the local transport (no SSH, no root).

The same peer protocol as over SSH (tests/test_lab_mesh.py runs it over real sshd in
network namespaces); here each "host" is a meshd home with its own tmux server, and
peers.conf names the others as ``local:<their home>``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Mesh, _make_mesh, rawreader_cmd, until


def make(tmp: Path, name: str) -> Mesh:
    (tmp / name).mkdir()
    m = _make_mesh(tmp / name)
    m.env["MESHD_HOST"] = name
    m.env["MESHD_LINKS_ANTI_ENTROPY_S"] = "0.3"
    m.env["MESHD_LINKS_BACKOFF_MAX_S"] = "0.5"
    m.env["MESHD_LINKS_DEAD_AFTER_S"] = "3"
    return m


def link(*hosts: Mesh) -> None:
    for m in hosts:
        m.home.mkdir(parents=True, exist_ok=True)
        others = [f"local:{o.home}" for o in hosts if o is not m]
        (m.home / "peers.conf").write_text("".join(f"{x}\n" for x in others))


@contextlib.contextmanager
def running(*hosts: Mesh) -> Iterator[tuple[Mesh, ...]]:
    """Stop the hosts' daemons and tmux servers when the block ends, whatever happened."""
    try:
        yield hosts
    finally:
        for m in hosts:
            m.stop_daemon()
            m.tmux.run("kill-server", check=False)




def agents(m: Mesh) -> dict[str, dict]:  # type: ignore[type-arg]
    r = m.run("mesh", "agents", "--json")
    assert r.returncode == 0, r.stderr
    return {x["address"]: x for x in json.loads(r.stdout)}


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Mesh, Mesh]]:
    a, b = make(tmp_path, "alpha"), make(tmp_path, "beta")
    link(a, b)
    with running(a, b):
        yield a, b


def test_registry_replicates_and_marks_unreachable(pair: tuple[Mesh, Mesh]) -> None:
    a, b = pair
    a.new_window("one", "bash --norc")
    b.new_window("two", "bash --norc")
    a.start_daemon()
    b.start_daemon()
    until(lambda: {"alpha-main-one", "beta-main-two"} <= set(agents(a)), what="a sees b's agent")
    until(lambda: {"alpha-main-one", "beta-main-two"} <= set(agents(b)), what="b sees a's agent")
    peers = until(lambda: (p := json.loads(a.run("mesh", "peers", "--json").stdout))
                  and p[0]["rtt_ms"] is not None and p, what="rtt measured")
    assert peers[0]["up"] and peers[0]["host"] == "beta" and peers[0]["lag_events"] == 0  # type: ignore[index]
    b.new_window("three", "bash --norc")
    b.run("mesh", "resync")
    until(lambda: "beta-main-three" in agents(a), what="a new window on b listed on a")
    b.stop_daemon()
    got = until(lambda: (x := agents(a)) and x["beta-main-two"]["state"] == "unreachable" and x,
                what="b's agents marked unreachable")
    assert got["beta-main-two"]["last_seen"]  # type: ignore[index]
    assert "beta-main-two" in (a.home / "registry.toml").read_text()


def sender_and_reader(a: Mesh, b: Mesh) -> Path:
    """A shell on a, a rawreader on b, both daemons up and linked; b's reader log."""
    a.new_window("sender", "bash --norc")
    log = b.root / "r.log"
    log.touch()
    b.new_window("reader", rawreader_cmd(log))
    a.start_daemon()
    b.start_daemon()
    until(lambda: "beta-main-reader" in agents(a), what="remote agent listed")
    return log


def test_cross_host_delivery_and_file(pair: tuple[Mesh, Mesh], tmp_path: Path) -> None:
    a, b = pair
    log = sender_and_reader(a, b)
    r = a.run("notify-pane", "beta-main-reader", "across hosts")
    assert r.returncode == 0, r.stderr
    until(lambda: b"across hosts" in log.read_bytes(), what="remote delivery")
    assert a.run("notify-pane", "beta-main-nobody", "x").returncode == 2
    f = tmp_path / "report.md"
    f.write_text("data")
    r = a.run("notify-pane", "beta-main-reader", "--file", str(f), "see file")
    assert r.returncode == 0, r.stderr
    inbox = Path(b.env["HOME"]) / ".agent-inbox"
    copied = until(lambda: list(inbox.rglob("report*.md")), what="file copied")
    assert copied[0].read_text() == "data"  # type: ignore[index]
    until(lambda: str(copied[0]).encode() in log.read_bytes(), what="path named")  # type: ignore[index]
    # The delivery event is journaled on b and replicates back to a.
    until(lambda: any(e["kind"] == "msg.delivered" and e["origin"] == "beta" for e in
                      json.loads(a.run("mesh", "inbox", "--json").stdout)), what="event back on a")


def test_queue_for_an_unreachable_host_delivers_exactly_once(pair: tuple[Mesh, Mesh]) -> None:
    a, b = pair
    log = sender_and_reader(a, b)
    b.stop_daemon()
    until(lambda: agents(a)["beta-main-reader"]["state"] == "unreachable", what="b down")
    r = a.run("notify-pane", "beta-main-reader", "later please")
    assert r.returncode == 4 and "not reachable" in r.stderr
    r = a.run("notify-pane", "--queue", "beta-main-reader", "queued hello")
    assert r.returncode == 0 and "queued" in r.stdout, r.stderr
    b.start_daemon()
    until(lambda: b"queued hello" in log.read_bytes(), what="queued message delivered")
    time.sleep(1.5)
    a.stop_daemon()
    a.start_daemon()  # a restart re-reads the journal; the message must not come again
    time.sleep(1.5)
    assert log.read_bytes().count(b"queued hello") == 1


def test_three_hosts_relay_through_the_middle(tmp_path: Path) -> None:
    """a and c each know only b (a bridge): events still reach everyone through b."""
    a, b, c = (make(tmp_path, n) for n in ("aa", "bb", "cc"))
    with running(a, b, c):
        for m in (a, b, c):
            m.home.mkdir(parents=True)
        (a.home / "peers.conf").write_text(f"local:{b.home}\n")
        (c.home / "peers.conf").write_text(f"local:{b.home}\n")
        (b.home / "peers.conf").write_text("")
        for m, w in ((a, "x"), (b, "y"), (c, "z")):
            m.new_window(w, "bash --norc")
            m.start_daemon()
        want = {"aa-main-x", "bb-main-y", "cc-main-z"}
        for m in (a, b, c):
            until(lambda m=m: want <= set(agents(m)), what=f"{m.env['MESHD_HOST']} sees all")
        regs = {m.env["MESHD_HOST"]: sorted(x for x in agents(m)) for m in (a, b, c)}
        assert regs["aa"] == regs["bb"] == regs["cc"]


def test_r12_bad_frames_drop_the_link_never_the_daemon(tmp_path: Path) -> None:
    """Malformed peer frames: truncated, huge length prefix, not JSON, deep nesting, wrong
    schema, unknown kinds, frames before hello, bad events.  Each drops only that link."""
    import random
    import socket
    import struct

    from meshd.transport.frames import encode

    m = make(tmp_path, "target")
    m.new_window("w", "bash --norc")
    m.start_daemon()
    sock_path = str(m.home / "meshd" / "meshd.sock")
    rnd = random.Random(12)
    hello = {"t": "hello", "host": "evil", "generation": 1, "vv": {}}
    cases: list[bytes] = [
        struct.pack(">I", 100 * 1024 * 1024) + b"{",           # 100 MB length prefix
        struct.pack(">I", 20) + b'{"v":1',                       # truncated
        struct.pack(">I", 5) + b"\xff\xfe\x00\x01\x02",          # not UTF-8 / JSON
        encode({"t": "events", "events": []}),                   # before hello
        encode(hello) + encode({"t": "nope"}),                   # unknown kind
        encode(hello) + encode({"t": "events", "events": [{"origin": "x"}]}),  # bad event
        encode(hello) + encode({"t": "vv", "vv": [1, 2]}),       # bad version vector
        encode(hello) + struct.pack(">I", 2) + b"[]",            # not an object
        encode(hello) + (lambda b: struct.pack(">I", len(b)) + b)(
            b'{"v":1,"t":"ping","ts":' + b"[" * 100 + b"]" * 100 + b"}"),  # deep nesting
        encode({"v": 2, "t": "hello"})[0:0] + struct.pack(">I", 9) + b'{"v": 99}',  # schema
    ]
    for _ in range(200):
        junk = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 64)))
        cases.append(encode(hello) + struct.pack(">I", len(junk)) + junk)
    try:
        for payload in cases:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(5)
            s.connect(sock_path)
            s.sendall(encode({"id": 0, "op": "link", "args": {}}) + payload)
            try:
                while s.recv(65536):
                    pass  # the daemon answers (hello, maybe events), then hangs up on us
            except (TimeoutError, ConnectionResetError):
                pass
            s.close()
        st = m.run("mesh", "status", "--json")
        assert st.returncode == 0, st.stderr
        assert json.loads(st.stdout)["agents_local"] == 1
        assert "evil" not in json.loads(st.stdout)["hosts"]
        log = (m.home / "meshd" / "meshd.log").read_text()
        assert "dropping the link" in log or "bad frame" in log
    finally:
        m.stop_daemon()
        m.tmux.run("kill-server", check=False)


def test_peers_add_remove_and_push(pair: tuple[Mesh, Mesh]) -> None:
    a, b = pair
    for m in (a, b):
        m.new_window("w", "bash --norc")
        m.start_daemon()
    until(lambda: "beta-main-w" in agents(a), what="linked")
    r = a.run("mesh", "peers", "add", "gpu-box", "--push")
    assert r.returncode == 0, r.stderr
    assert "beta: written" in r.stdout
    want = [f"local:{b.home}", "gpu-box"]
    lines = lambda m: [x for x in (m.home / "peers.conf").read_text().splitlines()  # noqa: E731
                       if x and not x.startswith("#")]
    assert lines(a) == want and lines(b) == want
    assert a.run("mesh", "peers", "remove", "gpu-box").returncode == 0
    assert lines(a) == [f"local:{b.home}"] and lines(b) == want
    bad = a.run("mesh", "peers", "add", "two words", "--push")
    assert bad.returncode == 78 and "bad alias" in bad.stderr
    assert lines(a) == [f"local:{b.home}"]
