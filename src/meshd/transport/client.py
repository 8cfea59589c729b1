"""Blocking client of the daemon's Unix socket, for the CLIs.

Imports only the stdlib, so ``notify-pane`` and ``mesh`` start fast.
"""

from __future__ import annotations

import itertools
import socket
from pathlib import Path

from meshd.errors import DaemonNotRunning, TransportError, from_dict
from meshd.transport.frames import HEADER, FrameError, body_length, decode, encode

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs start-up time
if TYPE_CHECKING:
    from typing import Any

_ids = itertools.count(1)
MAX_REPLY = 64 * 1024 * 1024


def call(sock_path: Path, op: str, args: dict[str, Any] | None = None,
         timeout_s: float = 30.0) -> Any:
    """Send one request and return its result; raises the daemon's error as a MeshError."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout_s)
    try:
        try:
            s.connect(str(sock_path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonNotRunning(f"meshd is not running ({sock_path}: {exc.strerror})",
                                   hint="start it with `mesh up`") from None
        except OSError as exc:
            raise TransportError(f"cannot reach meshd at {sock_path}: {exc}") from None
        rid = next(_ids)
        try:
            s.sendall(encode({"id": rid, "op": op, "args": args or {}}))
            reply = decode(_read_exact(s, body_length(_read_exact(s, HEADER.size), MAX_REPLY)))
        except TimeoutError:
            raise TransportError(f"meshd did not answer {op!r} within {timeout_s:g} s") from None
        except (OSError, FrameError) as exc:
            raise TransportError(f"meshd connection failed during {op!r}: {exc}") from None
    finally:
        s.close()
    if not reply.get("ok"):
        err = reply.get("error")
        raise from_dict(err if isinstance(err, dict) else {"message": str(err)})
    return reply.get("result")


def _read_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionResetError("meshd closed the connection")
        buf += chunk
    return bytes(buf)
