"""A peer on this machine, reached through its Unix socket: ``local:/path/to/.agents``.

The same peer protocol as an SSH link, without SSH: for tests (two daemons in one
process tree, no root, no sshd) and for several meshd homes on one machine.  File copies
go to the peer's ``<home>/../.agent-inbox``, as SFTP would on a real host.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshd.delivery.inbox import deposit
from meshd.errors import TransportError
from meshd.paths import StatePaths
from meshd.transport.streams import read_frame, write_frame

PREFIX = "local:"


@dataclass
class LocalLink:
    alias: str
    reader: Any
    writer: Any
    peer: StatePaths

    def close(self) -> None:
        self.writer.close()

    async def put_file(self, local: Path, sender: str) -> str:
        dest = await asyncio.to_thread(deposit, self.peer.inbox, sender, local, 1 << 40)
        return str(dest)


async def open_local(alias: str, timeout_s: float) -> LocalLink:
    home = Path(alias.removeprefix(PREFIX))
    peer = StatePaths(home, home.parent / ".agent-inbox")
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(peer.socket)),
                                                timeout_s)
        await write_frame(writer, {"id": 0, "op": "link", "args": {}})
        reply = await asyncio.wait_for(read_frame(reader, 1 << 20), timeout_s)
    except (OSError, TimeoutError) as exc:
        raise TransportError(f"{alias}: cannot reach that meshd: {exc}") from None
    if not reply or not reply.get("ok"):
        writer.close()
        raise TransportError(f"{alias}: meshd refused the link: {reply}")
    return LocalLink(alias, reader, writer, peer)
