"""Delivery under hostile input and races: RELIABILITY.md §3.4 T1-T4, T7-T9.

Against a real tmux server and the rawreader fixture (raw mode, bracketed paste on, logs
every byte it reads).  The number of fuzz messages defaults to a CI-sized run; set
MESHD_FUZZ_N=10000 for the full T1 figure (docs/benchmarks.md records the last full run).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import rawreader_cmd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshd.delivery.sanitize import sanitize
from meshd.delivery.service import SendOptions, deliver
from meshd.errors import MeshError, Refused
from meshd.tmux import paste as tp
from meshd.tmux.runner import PaneGone, Tmux

START, END = b"\x1b[200~", b"\x1b[201~"
FUZZ_N = int(os.environ.get("MESHD_FUZZ_N", "300"))
FAST = SendOptions(enter_delay_s=0.0, verify_timeout_s=2.0, enter_retries=0)


class Reader:
    """A rawreader pane plus an incremental view of its byte log."""

    def __init__(self, root: Path, name: str = "r", burst_ms: int = 0) -> None:
        self.sock = root / f"{name}.sock"
        self.tmux = Tmux(self.sock, 10, Path("/dev/null"))
        self.log = root / f"{name}.log"
        self.log.touch()
        self.tmux.run("new-session", "-d", "-s", "s", "-x", "200", "-y", "50",
                      rawreader_cmd(self.log, burst_ms=burst_ms))
        self.pane = self.tmux.run("list-panes", "-F", "#{pane_id}").strip()
        self.pid = int(self.tmux.run("list-panes", "-F", "#{pane_pid}").strip())
        self.offset = 0
        deadline = time.monotonic() + 10
        while ">" not in self.tmux.run("capture-pane", "-p", "-t", self.pane):
            assert time.monotonic() < deadline, "rawreader did not start"
            time.sleep(0.02)

    def send(self, text: str, opts: SendOptions = FAST) -> None:
        deliver(self.tmux, self.pane, self.pid, "other", text, opts, self.sock.parent / "locks")

    def take(self, n: int = 1, timeout: float = 10) -> list[bytes]:
        """The next ``n`` complete ``paste + CR`` records after the last taken one."""
        pat = re.compile(re.escape(START) + b"(.*?)" + re.escape(END) + b"(\r)", re.DOTALL)
        deadline = time.monotonic() + timeout
        while True:
            data = self.log.read_bytes()[self.offset:]
            found = list(pat.finditer(data))
            if len(found) >= n:
                self.offset += found[n - 1].end()
                return [m.group(1) for m in found[:n]]
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)}/{n} records; tail {data[-300:]!r}")
            time.sleep(0.005)

    def close(self) -> None:
        subprocess.run(self.tmux.argv("kill-server"), capture_output=True)


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reader]:
    r = Reader(tmp_path_factory.mktemp("fuzz"))
    yield r
    r.close()


def wire(text: str) -> bytes:
    """What the application must read for a pasted ``text``: tmux turns LF into CR."""
    return text.encode("utf-8").replace(b"\n", b"\r")


def assert_clean(tmux: Tmux) -> None:
    assert tmux.run("show-options", "-gqv", "@pwned").strip() == ""
    assert tp.leftover_buffers(tmux) == []
    assert tmux.run("list-windows", "-a", "-F", "#{window_id}").split() == ["@0"]


hostile = st.sampled_from([
    "\x1b[201~", "\x1b[200~", "\x1b]52;c;cHduZWQ=\x07", "\x1bP+q\x1b\\", "\x9b", "\x1b_x\x1b\\",
    "Enter", "C-c", "Escape", ";", "\\;", " ; kill-server", "-", "--", "\x00", "\x7f", "\r", "\n",
    "\u202e", "\u2066", "\ufeff", "e\u0301", "\U0001F468\u200d\U0001F469\u200d\U0001F467",
    "漢字", "مرحبا", "\x04", "\x03", "\t", "#{pane_pid}", "$(touch /tmp/x)", "`id`",
])
messages = st.lists(st.one_of(hostile, st.text(max_size=40),
                              st.binary(max_size=30).map(lambda b: b.decode("utf-8", "replace"))),
                    min_size=1, max_size=12).map("".join)


@settings(max_examples=FUZZ_N, deadline=None, suppress_health_check=list(HealthCheck))
@given(msg=messages)
def test_t1_t9_random_messages_arrive_byte_exact(reader: Reader, msg: str) -> None:
    text = sanitize(msg).strip("\n") or "."
    reader.send(text)
    got = reader.take()[0]
    assert got == wire(text)
    assert b"\x1b" not in got
    assert_clean(reader.tmux)


def test_t1_exactly_one_submit_per_message(reader: Reader) -> None:
    before = reader.log.read_bytes()
    for i in range(20):
        reader.send(f"submit-check {i};")
    reader.take(20)
    new = reader.log.read_bytes()[len(before):]
    outside = re.sub(re.escape(START) + b".*?" + re.escape(END), b"", new, flags=re.DOTALL)
    assert outside.count(b"\r") == 20


def test_t2_bracket_breakout_never_runs_a_command(tmp_path: Path) -> None:
    """A real bash with bracketed paste: the raw payload runs `touch`; the sanitised one never."""
    tmux = Tmux(tmp_path / "t2.sock", 10, Path("/dev/null"))
    rc = tmp_path / "rc"
    rc.write_text("bind 'set enable-bracketed-paste on'\nPS1='$ '\n")
    tmux.run("new-session", "-d", "-x", "120", "-y", "30", f"bash --noprofile --rcfile {rc} -i")
    pane = tmux.run("list-panes", "-F", "#{pane_id}").strip()
    pid = int(tmux.run("list-panes", "-F", "#{pane_pid}").strip())
    try:
        time.sleep(0.5)
        pwn, base = tmp_path / "pwn", tmp_path / "baseline"
        # Baseline: the same payload unsanitised, straight through a paste, does run.
        tmux.run("load-buffer", "-b", "raw", "-", stdin=f"x\x1b[201~\ntouch {base}\n".encode())
        tmux.run("paste-buffer", "-p", "-d", "-b", "raw", "-t", pane)
        time.sleep(0.5)
        tmux.run("send-keys", "-t", pane, "C-c")
        deliver(tmux, pane, pid, "shell", sanitize(f"x\x1b[201~\ntouch {pwn}\n").strip("\n"),
                SendOptions(enter_delay_s=0.1, verify_timeout_s=0.5, enter_retries=0),
                tmp_path / "locks")
        time.sleep(0.5)
        assert base.exists(), "baseline: tmux passed the breakout (if not, the test proves nothing)"
        assert not pwn.exists()
        assert f"# touch {pwn}" in tmux.run("capture-pane", "-p", "-t", pane)
    finally:
        subprocess.run(tmux.argv("kill-server"), capture_output=True)


def test_t3_one_megabyte_message_arrives_whole(reader: Reader) -> None:
    text = ("0123456789abcdef" * 63 + "\n") * 1040
    text = text[: 1024 * 1024].strip("\n")
    reader.send(text)
    assert reader.take(timeout=30)[0] == wire(text)
    assert_clean(reader.tmux)


def test_t4_copy_mode_input_off_and_dead_pane_are_refused_never_dropped(tmp_path: Path) -> None:
    r = Reader(tmp_path)
    try:
        for trial in range(10):
            r.tmux.run("copy-mode", "-t", r.pane)
            with pytest.raises(Refused, match="copy-mode"):
                r.send(f"copy {trial}")
            # With --wait it is held, then delivered once the mode ends.
            threading.Timer(0.3, r.tmux.run, ("send-keys", "-t", r.pane, "-X", "cancel")).start()
            r.send(f"held {trial}", SendOptions(wait_s=5, enter_delay_s=0, enter_retries=0))
            assert r.take()[0] == f"held {trial}".encode()
        r.tmux.run("select-pane", "-d", "-t", r.pane)
        with pytest.raises(Refused, match="input is disabled"):
            r.send("input off")
        r.tmux.run("select-pane", "-e", "-t", r.pane)
        r.send("input on")
        assert r.take()[0] == b"input on"
        assert START + b"copy" not in r.log.read_bytes()
        r.tmux.run("set-option", "-g", "remain-on-exit", "on")
        r.tmux.run("send-keys", "-t", r.pane, "C-d")
        time.sleep(0.3)
        with pytest.raises(PaneGone):
            r.send("to the dead")
    finally:
        r.close()


def test_t7_replaced_pane_receives_nothing(tmp_path: Path) -> None:
    r = Reader(tmp_path)
    try:
        old_pid = r.pid
        r.tmux.run("respawn-pane", "-k", "-t", r.pane, rawreader_cmd(r.log, prompt="new> "))
        time.sleep(0.5)
        size = r.log.stat().st_size
        for attempt in (lambda: deliver(r.tmux, r.pane, old_pid, "other", "misdelivery", FAST,
                                        tmp_path / "locks"),
                        lambda: tp.paste(r.tmux, r.pane, old_pid, "misdelivery")):
            with pytest.raises(MeshError):
                attempt()
        time.sleep(0.2)
        assert b"misdelivery" not in r.log.read_bytes()[size:]
        assert tp.leftover_buffers(r.tmux) == []
    finally:
        r.close()


def test_t8_ten_concurrent_senders_never_interleave(reader: Reader) -> None:
    per = 20
    errors: list[BaseException] = []

    def sender(i: int) -> None:
        try:
            for k in range(per):
                reader.send(f"s{i:02d}-{k:03d}-" + "y" * (50 + 30 * i))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    got = [g.decode() for g in reader.take(10 * per, timeout=60)]
    assert sorted(got) == sorted(f"s{i:02d}-{k:03d}-" + "y" * (50 + 30 * i)
                                 for i in range(10) for k in range(per))
    for i in range(10):
        mine = [g[:8] for g in got if g.startswith(f"s{i:02d}-")]
        assert mine == sorted(mine)
    assert_clean(reader.tmux)


def test_shell_draft_is_never_clobbered_and_wait_delivers_after(tmp_path: Path) -> None:
    """T5 on a real bash: a half-typed command is refused; --wait delivers once it is gone,
    as a comment, so the shell shows the message and runs nothing."""
    if shutil.which("bash") is None:
        pytest.skip("bash not installed")
    tmux = Tmux(tmp_path / "t5.sock", 10, Path("/dev/null"))
    tmux.run("new-session", "-d", "-x", "120", "-y", "30", "bash --norc --noprofile")
    pane = tmux.run("list-panes", "-F", "#{pane_id}").strip()
    pid = int(tmux.run("list-panes", "-F", "#{pane_pid}").strip())
    try:
        time.sleep(0.4)
        tmux.run("send-keys", "-t", pane, "-l", "git commit -m 'half")
        time.sleep(0.2)
        with pytest.raises(Refused, match="typing"):
            deliver(tmux, pane, pid, "shell", "echo meshd-message", FAST, tmp_path / "locks")
        screen = tmux.run("capture-pane", "-p", "-t", pane)
        assert "git commit -m 'half" in screen and "meshd-message" not in screen
        threading.Timer(0.5, tmux.run, ("send-keys", "-t", pane, "C-u")).start()
        deliver(tmux, pane, pid, "shell", "echo meshd-$((20+1))",
                SendOptions(wait_s=5, enter_delay_s=0.05), tmp_path / "locks")
        deadline = time.monotonic() + 5
        while "# echo meshd-$((20+1))" not in tmux.run("capture-pane", "-p", "-t", pane):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.2)
        assert "meshd-21" not in tmux.run("capture-pane", "-p", "-t", pane)
    finally:
        subprocess.run(tmux.argv("kill-server"), capture_output=True)


def submits(r: Reader) -> int:
    return r.tmux.run("capture-pane", "-p", "-S", "-", "-t", r.pane).count("<< SUBMIT")


def test_t6_paste_burst_window_every_message_submitted_exactly_once(tmp_path: Path) -> None:
    """A Codex-like paste-burst: Enter within 120 ms of a paste is a newline, not a submit."""
    r = Reader(tmp_path, burst_ms=120)
    try:
        # Enter right after the paste is swallowed; the verify step sees no submit and retries.
        eager = SendOptions(enter_delay_s=0.0, verify_timeout_s=0.3, enter_retries=3)
        # Enter after a measured paste window submits on the first press.
        patient = SendOptions(enter_delay_s=0.3, verify_timeout_s=1.0, enter_retries=3)
        for i in range(15):
            for opts in (eager, patient):
                before = submits(r)
                r.send(f"burst {i}", opts)
                deadline = time.monotonic() + 3
                while submits(r) == before and time.monotonic() < deadline:
                    time.sleep(0.02)
                time.sleep(0.15)
                assert submits(r) == before + 1, "stranded or double-submitted"
    finally:
        r.close()
