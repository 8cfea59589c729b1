"""The daemon side of the Unix-socket API (asyncio).

One request per frame, answered in order per connection.  A malformed
frame closes that connection with a log line; it never reaches a handler and
never stops the server.  Handlers get ``(op, args)`` and return JSON data or
raise a MeshError, which is sent back as ``{"ok": false, "error": {...}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from meshd.errors import MeshError
from meshd.transport.frames import FrameError
from meshd.transport.streams import read_frame, write_frame

log = logging.getLogger(__name__)
Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]
PeerHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class UnixServer:
    """The listening socket and its open client connections."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.clients: set[asyncio.StreamWriter] = set()

    def close(self) -> None:
        """Stop listening and end every open connection (their sessions see EOF and return)."""
        if self.server is not None:
            self.server.close()
        for w in list(self.clients):
            w.close()

    async def wait_closed(self, timeout_s: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.clients and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)


async def serve(path: Path, handler: Handler, *, max_frame: int, timeout_s: float,
                peer_handler: PeerHandler | None = None) -> UnixServer:
    """Bind the socket (mode 0600) and serve until the returned server is closed."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    us = UnixServer()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        us.clients.add(writer)
        try:
            await _session(reader, writer, handler, peer_handler, max_frame, timeout_s)
        finally:
            us.clients.discard(writer)
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()

    old = os.umask(0o077)
    try:
        us.server = await asyncio.start_unix_server(on_client, path=str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return us


async def _session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   handler: Handler, peer_handler: PeerHandler | None, max_frame: int,
                   timeout_s: float) -> None:
    while True:
        try:
            req = await read_frame(reader, max_frame)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        except FrameError as exc:
            log.warning("dropping API client: %s", exc)
            return
        if req is None:
            return
        rid, op, args = req.get("id"), req.get("op"), req.get("args")
        if not isinstance(op, str) or not isinstance(args, dict):
            log.warning("dropping API client: request without op/args")
            return
        if op == "link" and peer_handler is not None:
            # `meshd link` on this host bridges a peer's SSH channel to us: from here on
            # the connection speaks the peer protocol, not requests.
            await write_frame(writer, {"id": rid, "ok": True, "result": {"link": True}})
            await peer_handler(reader, writer)
            return
        try:
            limit = timeout_s + _extra_wait(args)
            result = await asyncio.wait_for(handler(op, args), limit)
            reply: dict[str, Any] = {"id": rid, "ok": True, "result": result}
        except MeshError as exc:
            reply = {"id": rid, "ok": False, "error": exc.to_dict()}
        except TimeoutError:
            reply = {"id": rid, "ok": False,
                     "error": {"code": "transport", "message": f"{op} timed out after {limit:g} s"}}
        except Exception as exc:  # a bug in one handler must not take the daemon down
            log.exception("API handler %s failed", op)
            reply = {"id": rid, "ok": False, "error": {"code": "error", "message": f"{op}: {exc}"}}
        await write_frame(writer, reply)


def _extra_wait(args: dict[str, Any]) -> float:
    """Requests that wait on purpose (``--wait``) get that much longer."""
    try:
        return max(0.0, float(args.get("wait_s") or 0))
    except (TypeError, ValueError):
        return 0.0
