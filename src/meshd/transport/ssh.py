"""Peer links over SSH (asyncssh), its one home in meshd.

``open_link(alias)`` connects with the user's own setup: ``~/.ssh/config`` (HostName,
User, IdentityFile, Port), keys and agent, and ``~/.ssh/known_hosts`` -- an unknown or
changed host key refuses the link.  It runs ``meshd link`` on the peer, whose stdin and
stdout then carry the peer protocol.  Keepalives make a dead peer visible within
``interval * (count + 1)`` seconds.  asyncssh's exceptions become TransportError here.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from meshd.errors import TransportError
from meshd.registry.address import slug


@dataclass
class SshLink:
    alias: str
    conn: asyncssh.SSHClientConnection
    process: asyncssh.SSHClientProcess[bytes]

    @property
    def reader(self) -> Any:
        return self.process.stdout

    @property
    def writer(self) -> Any:
        return self.process.stdin

    def close(self) -> None:
        self.process.close()
        self.conn.close()

    async def put_file(self, local: Path, sender: str) -> str:
        """Copy ``local`` to the peer's ``~/.agent-inbox/<sender>/`` without overwriting.

        Returns the absolute remote path.  Exclusive create (O_EXCL) picks ``name.N.ext``
        when the name is taken, so an earlier file is never replaced.
        """
        folder = posixpath.join(".agent-inbox", slug(sender))
        stem, ext = os.path.splitext(local.name)
        try:
            async with self.conn.start_sftp_client() as sftp:
                await sftp.makedirs(folder, exist_ok=True)
                for n in range(10000):
                    name = local.name if n == 0 else f"{stem}.{n}{ext}"
                    path = posixpath.join(folder, name)
                    try:
                        remote = await sftp.open(path, "xb", asyncssh.SFTPAttrs(permissions=0o600))
                    except asyncssh.SFTPFailure:
                        if await sftp.exists(path):
                            continue
                        raise
                    async with remote:
                        with local.open("rb") as fh:
                            while chunk := fh.read(1 << 16):
                                await remote.write(chunk)
                    return str(await sftp.realpath(path))
        except (asyncssh.Error, OSError) as exc:
            raise TransportError(f"copying {local.name} to {self.alias} failed: {exc}") from exc
        raise TransportError(f"{self.alias}: 10000 copies of {local.name} already in the inbox")


async def open_link(alias: str, remote_command: str, *, connect_timeout_s: float,
                    keepalive_interval_s: float, keepalive_count: int,
                    identity_file: str = "") -> SshLink:
    """Connect to ``alias`` and start ``remote_command`` (``meshd link``) there."""
    keys: dict[str, Any] = {"client_keys": [os.path.expanduser(identity_file)]} if identity_file else {}
    try:
        conn = await asyncssh.connect(
            alias, connect_timeout=connect_timeout_s, login_timeout=connect_timeout_s,
            keepalive_interval=keepalive_interval_s, keepalive_count_max=keepalive_count, **keys)
    except asyncssh.HostKeyNotVerifiable as exc:
        raise TransportError(f"{alias}: host key refused ({exc.reason}); not linking",
                             hint=f"verify the key, then `ssh {alias}` once to accept it") from None
    except asyncssh.PermissionDenied as exc:
        raise TransportError(f"{alias}: SSH login refused ({exc.reason})",
                             hint="is your key in the peer's authorized_keys?") from None
    except (asyncssh.Error, OSError, TimeoutError) as exc:
        raise TransportError(f"{alias}: cannot connect: {exc}") from None
    try:
        process = await conn.create_process(remote_command, encoding=None)
    except (asyncssh.Error, OSError) as exc:
        conn.close()
        raise TransportError(f"{alias}: cannot start `{remote_command}`: {exc}") from None
    return SshLink(alias, conn, process)
