"""Length-prefixed JSON frames.  Pure.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8
JSON holding one object with ``"v": SCHEMA``.  Decoding enforces a size cap
*before* reading the body, and rejects non-objects, a wrong schema version
and nesting deeper than ``MAX_DEPTH``, so a hostile peer can make us drop the
connection but never exhaust memory or crash the daemon.
"""

from __future__ import annotations

import json
import struct

TYPE_CHECKING = False  # importing typing costs CLI start-up time
if TYPE_CHECKING:
    from typing import Any

SCHEMA = 1
HEADER = struct.Struct(">I")
MAX_DEPTH = 32


class FrameError(ValueError):
    """A frame that must not be processed; the connection should be dropped."""


def encode(obj: dict[str, Any]) -> bytes:
    body = json.dumps({"v": SCHEMA, **obj}, separators=(",", ":"), ensure_ascii=False).encode()
    return HEADER.pack(len(body)) + body


def body_length(header: bytes, cap: int) -> int:
    n: int = HEADER.unpack(header)[0]
    if n > cap:
        raise FrameError(f"frame of {n} bytes exceeds the {cap}-byte cap")
    return n


def decode(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FrameError(f"frame is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise FrameError("frame is not a JSON object")
    if obj.get("v") != SCHEMA:
        raise FrameError(f"frame schema version {obj.get('v')!r} is not {SCHEMA}")
    if _depth(obj) > MAX_DEPTH:
        raise FrameError(f"frame nests deeper than {MAX_DEPTH}")
    return obj


def _depth(obj: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(obj, dict):
        return max((_depth(v, level + 1) for v in obj.values()), default=level + 1)
    if isinstance(obj, list):
        return max((_depth(v, level + 1) for v in obj), default=level + 1)
    return level
