"""Frames over asyncio streams: the Unix socket and the SSH link speak the same way."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from meshd.transport.frames import HEADER, body_length, decode, encode


class Reader(Protocol):
    async def readexactly(self, n: int) -> bytes: ...


class Writer(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


async def read_frame(reader: Reader, cap: int) -> dict[str, Any] | None:
    """The next frame, or None at a clean end of stream.  FrameError on a bad one."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ConnectionResetError("stream ended inside a frame header") from None
        return None
    return decode(await reader.readexactly(body_length(header, cap)))


async def write_frame(writer: Writer, obj: dict[str, Any]) -> None:
    writer.write(encode(obj))
    await writer.drain()
