"""The ARCHITECT: which agent it is, and its term.

**Who.**  The earliest-registered *live* agent of the mesh (registration order is the
fold position of an agent's first sighting, the same on every host).  An agent counts
while its host is this host, its host's link is up, or its host was last seen less than
``tasks.architect_grace_s`` ago (a link flap must not change the architect).  Hosts
never seen since this daemon started count as seen at its start, so a restart does not
hand the role to a local agent for the few seconds before the links come up.  During a
partition each side may therefore have its own architect; once the journals agree again
(the partition healed) every host names the same one.

**Term.**  A number that only grows, carried by ``architect.term`` events
(``{architect, address, term}``).  The current term is the event with the largest
``(term, architect)``.  When the chosen architect is an agent of *this* host and the
current term names someone else -- or its number was also claimed for someone else, as
both sides of a partition do -- this host claims ``term + 1`` for it -- at most once
per ``CLAIM_EVERY_S``, so hosts that disagree for a while (a partial partition) add
terms slowly instead of racing.  Only the architect's own host claims, so after a heal
exactly one claim follows, and every host then shows the same architect and term.

A command that carries a term (``mesh task add|cancel|pause|resume|review --term N``)
is refused (exit 3) unless N is the current term on the host that takes it and, when the
caller is an agent, the caller is that term's architect: a stale architect from the other
side of a healed partition cannot act on its old term.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshd.errors import Refused, UsageError
from meshd.journal.event import Event
from meshd.registry.fold import Entry

log = logging.getLogger(__name__)

CLAIM_EVERY_S = 5.0
CHECK_S = 0.5


@dataclass(frozen=True, order=True)
class Term:
    term: int = 0
    architect: str = ""        # agent id
    address: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"term": self.term, "architect": self.architect, "address": self.address}


def choose(listing: Iterable[Entry], *, here: str, up: set[str], last_seen: Mapping[str, float],
           started: float, grace_s: float, now: float) -> Entry | None:
    """The architect: the first entry of ``listing`` (registration order) whose host counts
    as live from ``here``.  Pure."""
    for x in listing:
        h = x.agent.host
        if h == here or h in up or now - last_seen.get(h, started) <= grace_s:
            return x
    return None


@dataclass
class TermBook:
    """What the ``architect.term`` events say: the current term, and which architects each
    term number was claimed for (two sides of a partition can claim the same number)."""

    current: Term = Term()
    claims: dict[int, set[str]] = field(default_factory=dict)

    @property
    def contested(self) -> bool:
        """The current number was also claimed for someone else: it must be superseded, so
        that every host sees the term number grow when the architect changes."""
        return len(self.claims.get(self.current.term, ())) > 1

    def apply(self, events: Iterable[Event]) -> None:
        """Fold ``events`` in (any order gives the same book).  Pure."""
        for e in events:
            if e.kind != "architect.term":
                continue
            try:
                t = Term(int(e.body["term"]), str(e.body["architect"]), str(e.body.get("address", "")))
            except (KeyError, TypeError, ValueError):
                continue
            self.claims.setdefault(t.term, set()).add(t.architect)
            self.current = max(self.current, t)


def check_term(current: Term, args: Mapping[str, Any], caller: str | None = None) -> None:
    """Refuse a command that carries an architect term other than the current one, or that
    comes from an agent (``caller``, its id) other than the current term's architect."""
    raw = args.get("term")
    if raw is None or raw == "":
        return
    try:
        term = int(raw)
    except (TypeError, ValueError):
        raise UsageError(f"--term must be a whole number, not {raw!r}") from None
    who = current.address or current.architect or "none"
    if term != current.term:
        raise Refused(f"stale architect term {term}: the current term is {current.term} "
                      f"(architect {who})",
                      hint="see `mesh agents`; only the current architect's term is accepted")
    if caller is not None and caller != current.architect:
        raise Refused(f"term {term} belongs to architect {who}, not to the caller",
                      hint="see `mesh agents`; only the current architect's term is accepted")


async def run(daemon: Any) -> None:
    """Claim a new term when the architect is an agent of this host and the record names
    someone else, or its number was claimed for someone else too."""
    last_claim = -CLAIM_EVERY_S
    while True:
        await asyncio.sleep(CHECK_S)
        arch = daemon.architect()
        book: TermBook = daemon.terms
        cur = book.current
        if arch is None or arch.agent.host != daemon.host:
            continue
        if arch.agent.id == cur.architect and not book.contested:
            continue
        if time.monotonic() - last_claim < CLAIM_EVERY_S:
            continue
        last_claim = time.monotonic()
        body = {"architect": arch.agent.id, "address": arch.agent.address, "term": cur.term + 1}
        log.info("architect %s claims term %d", arch.agent.address, cur.term + 1)
        await daemon.record("architect.term", body)
