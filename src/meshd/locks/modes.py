"""Lock modes and the compatibility matrix.  Pure.

| held \\ wanted | READ | WRITE | INTENT | CO_WRITE |
|---|---|---|---|---|
| READ     | yes | no | yes | no  |
| WRITE    | no  | no | no  | no  |
| INTENT   | yes | no | no  | no  |
| CO_WRITE | no  | no | no  | yes |

READ shares with READ; WRITE is exclusive; INTENT announces a coming write:
readers may stay, but it excludes other INTENTs and every writer; CO_WRITE
(cooperative writers, e.g. agents editing disjoint parts) shares only with
CO_WRITE.  The same holder never conflicts with itself, which is what makes
the INTENT -> WRITE upgrade possible once other readers are gone.
"""

from __future__ import annotations

from enum import StrEnum


class Mode(StrEnum):
    READ = "read"
    WRITE = "write"
    INTENT = "intent"
    CO_WRITE = "co_write"


_COMPATIBLE: frozenset[frozenset[Mode]] = frozenset({
    frozenset({Mode.READ}),                 # READ + READ
    frozenset({Mode.READ, Mode.INTENT}),    # READ + INTENT
    frozenset({Mode.CO_WRITE}),             # CO_WRITE + CO_WRITE
})


def compatible(held: Mode, wanted: Mode) -> bool:
    """Can ``wanted`` be granted to another holder while ``held`` is held?  Symmetric."""
    return frozenset({held, wanted}) in _COMPATIBLE


def may_upgrade(held: Mode, wanted: Mode) -> bool:
    """Modes one holder may move to while holding ``held`` (INTENT -> WRITE)."""
    return held == wanted or (held, wanted) in {(Mode.INTENT, Mode.WRITE), (Mode.READ, Mode.WRITE)}
