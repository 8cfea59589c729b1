"""A toy agent for ``mesh demo``: a line REPL that echoes and relays what it receives.

    python -m meshd.demo.agent --name builder

It shows ``NAME> ``, turns on bracketed paste (``ESC[?2004h``) the way agent
CLIs do, so meshd's multi-line pastes arrive as one input, and prints
``[NAME] received: TEXT`` for each submitted input.  An input containing
``please relay to ADDR`` is forwarded once, with that phrase removed, by
running ``notify-pane ADDR TEXT`` in a background thread (the prompt stays
responsive, so meshd's submit check sees the echo at once).  ``/quit`` or
Ctrl-D on an empty line exits.

:class:`LineEditor` (bytes in, echo and submitted lines out) is pure and has
no terminal; :func:`main` wires it to the tty in cbreak mode, or reads plain
lines when stdin is not a terminal.
"""

from __future__ import annotations

import argparse
import codecs
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from meshd.demo import RELAY_PHRASE, notify_command

PASTE_ON, PASTE_OFF = "\x1b[?2004h", "\x1b[?2004l"
PASTE_START, PASTE_END = "\x1b[200~", "\x1b[201~"
EOF = "\x04"
_RELAY = re.compile(re.escape(RELAY_PHRASE) + r"\s+([A-Za-z0-9][A-Za-z0-9._@-]*[A-Za-z0-9])",
                    re.IGNORECASE)
_TAG = re.compile(r"^\[from (\S+) @ [^\]]*\]\s*")


@dataclass
class LineEditor:
    """Line editing for a cbreak terminal: printable keys, Backspace, Ctrl-U, Enter, pastes.

    Inside a bracketed paste, newlines are part of the draft instead of submitting it.
    Other escape sequences (arrows, function keys) are dropped.  ``feed`` returns
    (text to echo, inputs submitted); a Ctrl-D on an empty draft submits :data:`EOF`.
    """

    draft: list[str] = field(default_factory=list)
    in_paste: bool = False
    _pending: str = ""
    _last_cr: bool = False

    def feed(self, data: str) -> tuple[str, list[str]]:
        buf, self._pending = self._pending + data, ""
        echo: list[str] = []
        done: list[str] = []
        i = 0
        while i < len(buf):
            if buf[i] == "\x1b":
                n = _escape_length(buf, i)
                if n == 0:
                    self._pending = buf[i:]
                    break
                self._escape(buf[i:i + n])
                i += n
                continue
            self._key(buf[i], echo, done)
            i += 1
        return "".join(echo), done

    def _escape(self, seq: str) -> None:
        if seq == PASTE_START:
            self.in_paste = True
        elif seq == PASTE_END:
            self.in_paste = False

    def _key(self, ch: str, echo: list[str], done: list[str]) -> None:
        was_cr, self._last_cr = self._last_cr, ch == "\r"
        if ch == "\n" and was_cr:
            return  # CR LF is one newline
        if ch in "\r\n":
            if self.in_paste:
                self.draft.append("\n")
                echo.append("\r\n  ")
            else:
                done.append("".join(self.draft))
                self.draft.clear()
                echo.append("\r\n")
        elif ch in "\x7f\x08":
            if self.draft and self.draft[-1] != "\n":
                self.draft.pop()
                echo.append("\b \b")
        elif ch == "\x15":
            echo.append("\b \b" * sum(1 for c in self.draft if c != "\n"))
            self.draft.clear()
        elif ch == EOF:
            if not self.draft:
                done.append(EOF)
        elif ch == "\t" or ch >= " ":
            self.draft.append(ch)
            echo.append(ch)


def _escape_length(buf: str, i: int) -> int:
    """Length of the escape sequence at ``buf[i]``, or 0 when it is not complete yet."""
    if i + 1 >= len(buf):
        return 0
    if buf[i + 1] == "[":
        for j in range(i + 2, min(len(buf), i + 32)):
            if "\x40" <= buf[j] <= "\x7e":
                return j - i + 1
        return 0 if len(buf) - i < 32 else len(buf) - i
    if buf[i + 1] == "O":
        return 3 if i + 2 < len(buf) else 0
    return 2


@dataclass(frozen=True)
class Relay:
    """A forward the agent was asked for: ``notify-pane to text``."""

    to: str
    text: str


def relay_of(name: str, received: str) -> Relay | None:
    """The forward that ``received`` asks for, with the request removed (so it hops once)."""
    m = _RELAY.search(received)
    if m is None:
        return None
    tag = _TAG.match(received)
    body = _TAG.sub("", received, count=1)
    body = _RELAY.sub("", body).strip(" \t\n.;:,")
    origin = f" from {tag.group(1)}" if tag else ""
    return Relay(m.group(1), f"{name} relays{origin}: {body}")


class Agent:
    """The REPL's behaviour, independent of how lines arrive.  Writes go through ``out``."""

    def __init__(self, name: str, out: TextIO, send: Callable[[Relay], str] | None = None) -> None:
        self.name = name
        self.prompt = f"{name}> "
        self.out = out
        self.send = send or run_notify
        self.editor = LineEditor()
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def write(self, text: str) -> None:
        with self.lock:
            self.out.write(text)
            self.out.flush()

    def announce(self, line: str) -> None:
        """Print a line above the prompt, keeping the draft the user is typing."""
        draft = "".join(self.editor.draft).replace("\n", "\r\n  ")
        self.write(f"\r\x1b[K{line}\r\n{self.prompt}{draft}")

    def handle(self, line: str) -> bool:
        """Act on one submitted input; False when the agent should exit."""
        text = line.strip()
        if text == EOF or text == "/quit":
            self.write("bye\r\n")
            return False
        if text:
            shown = text.replace("\n", "\r\n    ")
            self.write(f"[{self.name}] received: {shown}\r\n")
            relay = relay_of(self.name, text)
            if relay is not None:
                self._start_relay(relay)
        self.write(self.prompt)
        return True

    def _start_relay(self, relay: Relay) -> None:
        self.write(f"[{self.name}] relaying to {relay.to} ...\r\n")
        t = threading.Thread(target=lambda: self.announce(self.send(relay)), daemon=True)
        self.threads.append(t)
        t.start()

    def join(self, timeout_s: float = 30.0) -> None:
        for t in self.threads:
            t.join(timeout_s)


def run_notify(relay: Relay) -> str:
    """Forward with ``notify-pane``; returns the line to show."""
    try:
        p = subprocess.run([*notify_command(), relay.to, relay.text], capture_output=True,
                           text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"[relay] to {relay.to} failed: {exc}"
    if p.returncode == 0:
        return f"[relay] to {relay.to}: {p.stdout.strip() or 'delivered'}"
    why = (p.stderr.strip().splitlines() or ["?"])[0]
    return f"[relay] to {relay.to} failed (exit {p.returncode}): {why}"


def run_tty(agent: Agent, fd: int) -> None:
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tty.setcbreak(fd)
    agent.write(PASTE_ON + agent.prompt)
    try:
        while True:
            try:
                if not _step(agent, decoder, os.read(fd, 4096)):
                    return
            except KeyboardInterrupt:  # Ctrl-C drops the draft, like a shell
                agent.editor.draft.clear()
                agent.write("^C\r\n" + agent.prompt)
    finally:
        agent.write(PASTE_OFF)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _step(agent: Agent, decoder: codecs.IncrementalDecoder, data: bytes) -> bool:
    """Feed one read; False at end of input or when the agent quits."""
    if not data:
        return False
    echo, lines = agent.editor.feed(decoder.decode(data))
    agent.write(echo)
    return all(agent.handle(line) for line in lines)


def run_lines(agent: Agent, stream: TextIO) -> None:
    """Plain line input (stdin is a pipe or file); paste markers are dropped."""
    agent.write(agent.prompt)
    for raw in stream:
        line = raw.rstrip("\n").replace(PASTE_START, "").replace(PASTE_END, "")
        if not agent.handle(line):
            break
    agent.join()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="meshd.demo.agent", description=__doc__.split("\n")[0])
    ap.add_argument("--name", required=True, help="the agent's name, shown in its prompt")
    args = ap.parse_args(argv)
    agent = Agent(args.name, sys.stdout)
    if sys.stdin.isatty():
        run_tty(agent, sys.stdin.fileno())
    else:
        run_lines(agent, sys.stdin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
