"""``meshd link``: bridge an SSH channel (stdin/stdout) to this host's meshd socket.

A peer's meshd runs ``ssh <this host> meshd link``; sshd authenticates it and starts
this process as our user.  We open the local Unix socket, switch the connection into
peer mode with one ``link`` request, then copy bytes both ways until either side
closes.  No new TCP port is ever opened: sshd is the only way in.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from meshd.errors import DaemonNotRunning, TransportError
from meshd.transport.frames import HEADER, body_length, decode, encode

_CHUNK = 1 << 16


def _pump(src: int, dst: int, on_eof: Callable[[], None]) -> None:
    try:
        while True:
            data = os.read(src, _CHUNK)
            if not data:
                break
            view = memoryview(data)
            while view:
                n = os.write(dst, view)
                view = view[n:]
    except OSError:
        pass
    finally:
        on_eof()


def run_link(sock_path: Path, stdin_fd: int = 0, stdout_fd: int = 1) -> int:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(sock_path))
    except OSError as exc:
        raise DaemonNotRunning(f"meshd link: no meshd at {sock_path} ({exc})",
                               hint="start meshd on this host: mesh up") from None
    s.sendall(encode({"id": 0, "op": "link", "args": {}}))
    header = _recv_exact(s, HEADER.size)
    reply = decode(_recv_exact(s, body_length(header, 1 << 20)))
    if not reply.get("ok"):
        raise TransportError(f"meshd link refused: {reply.get('error')}")
    done = threading.Event()
    fd = s.fileno()
    def stdin_closed() -> None:
        _shut(s)
        done.set()

    threading.Thread(target=_pump, args=(stdin_fd, fd, stdin_closed), daemon=True).start()
    threading.Thread(target=_pump, args=(fd, stdout_fd, done.set), daemon=True).start()
    done.wait()
    return 0


def _shut(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_WR)


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise TransportError("meshd closed the link during the handshake")
        buf += chunk
    return bytes(buf)
