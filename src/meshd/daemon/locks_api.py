"""Unix-socket ops of the lock service, and its lease ticker.

Ops (args -> result; errors are MeshErrors, so exit codes come for free):

* ``lock_acquire`` {target, mode, holder | shell_user+shell_pid, ttl_s?, wait_s?, request_id?}
  -> grant {token, mode, target, holder, home, expires_in, ttl_s, request_id, how}
* ``lock_release`` {target, holder | shell_*, token?} -> {released, token, ...}
* ``lock_renew``   {target, holder | shell_*, token?, ttl_s?} -> grant
* ``lock_check``   {target, token} -> {valid, reason, ...}  (a read: never an error for "invalid")
* ``lock_list``    {} -> {home, fence, grants, waiters, lock_delays, wait_for}

Refusals (conflict, deadlock, gave up waiting, L5 rejections) raise
:class:`LockConflict` / :class:`LockRejected`, both :class:`meshd.errors.Refused`
(exit 3); a key whose home is another host raises ``TransportError`` (exit 4).
Every grant and release is journaled (``lock.granted``, ``lock.released``,
``lock.expired``) before the answer goes out, after the lock store committed it.

Wiring into the daemon: ``attach`` in ``Daemon._start`` (it opens SQLite, so
through ``asyncio.to_thread``), the five ``OPS`` into ``Api.ops``, and
``run_ticker`` in the root TaskGroup.  The daemon satisfies :class:`LocksDaemon`
once it declares ``self.locks: LockService | None = None``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
import uuid
from typing import Any, Protocol

from meshd.errors import MeshError, Refused, StateError, TransportError, UsageError
from meshd.files import read_line_file
from meshd.locks.modes import Mode
from meshd.locks.service import (
    DEFAULT_GRACE_S,
    DEFAULT_LOCK_DELAY_S,
    DEFAULT_TTL_S,
    Liveness,
    LockService,
)
from meshd.locks.table import Conflict, Deadlock, Grant, Granted, Queued, Rejected, normalize
from meshd.paths import StatePaths
from meshd.registry.address import slug

log = logging.getLogger(__name__)

TICK_S = 1.0          # longest sleep of the ticker; it wakes earlier for the next deadline
_MAX_HOLDER = 256


class LockConflict(Refused):
    """Conflict, deadlock, or gave up waiting (exit 3; on the wire it is ``refused``)."""


class LockRejected(Refused):
    """Release/renew by a non-holder, an expired holder or with a wrong token (exit 3)."""


class LocksDaemon(Protocol):
    host: str
    paths: StatePaths
    locks: LockService | None

    async def record(self, kind: str, body: dict[str, Any]) -> object: ...


def attach(daemon: LocksDaemon) -> LockService:
    """Open ``<state_dir>/locks.db`` and set ``daemon.locks``.  Blocking (SQLite)."""
    cfg = getattr(getattr(daemon, "cfg", None), "locks", None)
    svc = LockService(daemon.paths.state_dir / "locks.db", home=daemon.host,
                      default_ttl_s=float(getattr(cfg, "ttl_s", DEFAULT_TTL_S)),
                      grace_s=float(getattr(cfg, "grace_s", DEFAULT_GRACE_S)),
                      lock_delay_s=float(getattr(cfg, "lock_delay_s", DEFAULT_LOCK_DELAY_S)))
    daemon.locks = svc
    return svc


# -- ops -----------------------------------------------------------------------------------
async def op_lock_acquire(daemon: LocksDaemon, args: dict[str, Any]) -> dict[str, Any]:
    svc, target = _service(daemon), _target(args)
    home = _home(daemon, target)
    # Other homes' edges are not passed as extra_edges: a cached edge may be stale, and a
    # refusal on it would abort for a phantom cycle.  lock_graph's pass confirms first.
    out = await svc.acquire_async(target, _mode(args), holder_of(daemon, args),
                                  ttl_s=_float(args, "ttl_s"), wait_s=_float(args, "wait_s") or 0.0,
                                  request_id=str(args.get("request_id") or "") or None)
    await _journal(daemon, out.events)
    res = out.result
    if isinstance(res, Granted):
        return {**grant_dict(svc, res.grant, home), "how": str(res.how)}
    raise _refusal(res, target)


async def op_lock_release(daemon: LocksDaemon, args: dict[str, Any]) -> dict[str, Any]:
    svc, target = _service(daemon), _target(args)
    home = _home(daemon, target)
    out = await asyncio.to_thread(svc.release, target, holder_of(daemon, args), _token(args))
    await _journal(daemon, out.events)
    if isinstance(out.result, Rejected):
        raise LockRejected(out.result.reason)
    g = out.result.grant
    return {"released": True, "token": g.token, "mode": str(g.mode), "target": g.target,
            "holder": g.holder, "home": home}


async def op_lock_renew(daemon: LocksDaemon, args: dict[str, Any]) -> dict[str, Any]:
    svc, target = _service(daemon), _target(args)
    home = _home(daemon, target)
    out = await asyncio.to_thread(svc.renew, target, holder_of(daemon, args), _token(args),
                                  _float(args, "ttl_s"))
    await _journal(daemon, out.events)
    if isinstance(out.result, Rejected):
        raise LockRejected(out.result.reason, hint="the lock is gone; acquire it again")
    return grant_dict(svc, out.result.grant, home)


async def op_lock_check(daemon: LocksDaemon, args: dict[str, Any]) -> dict[str, Any]:
    svc, target = _service(daemon), _target(args)
    home = _home(daemon, target)
    token = _token(args)
    if token is None:
        raise UsageError("lock_check needs a token")
    out = await asyncio.to_thread(svc.check, target, token)
    await _journal(daemon, out.events)
    c = out.result
    body: dict[str, Any] = {"valid": c.valid, "reason": c.reason, "target": target, "token": token,
                            "home": home}
    if c.grant is not None and c.valid:
        body.update(holder=c.grant.holder, mode=str(c.grant.mode), locked=c.grant.target,
                    expires_in=round(c.grant.expires_at - svc.clock(), 3))
    return body


async def op_lock_list(daemon: LocksDaemon, args: dict[str, Any]) -> dict[str, Any]:
    svc = _service(daemon)
    out = await asyncio.to_thread(svc.snapshot)
    await _journal(daemon, out.events)
    s = out.result
    return {
        "home": daemon.host, "fence": s.fence,
        "grants": [grant_dict(svc, g, daemon.host, now=s.now) for g in s.grants],
        "waiters": [{"target": w.target, "mode": str(w.mode), "holder": w.holder,
                     "request_id": w.request_id, "position": i + 1, "waiting_s": round(s.now - w.since, 3),
                     "gives_up_in": None if w.deadline is None else round(w.deadline - s.now, 3),
                     "upgrade": w.upgrade_of is not None, "blocked_by": list(b.blockers())}
                    for i, (w, b) in enumerate(s.waiting)],
        "lock_delays": [{"target": d.target, "mode": str(d.mode), "holder": d.holder,
                         "token": d.token, "ends_in": round(d.until - s.now, 3)} for d in s.delays],
        "wait_for": sorted([w, h] for w, hs in s.edges.items() for h in hs),
    }


LOCAL_OPS = {"lock_acquire": op_lock_acquire, "lock_release": op_lock_release,
             "lock_renew": op_lock_renew, "lock_check": op_lock_check, "lock_list": op_lock_list}


def _forwarding(name: str) -> Any:
    """The op as the CLI calls it: run here when this host is the target's home, else on
    the home over the peer link (``peer_lock_op``).  The holder is resolved here, where
    the caller is; an unreachable home fails with exit 4 and never grants anywhere else."""
    async def op(daemon: LocksDaemon, args: dict[str, Any]) -> dict[str, Any]:
        raw = str(args.get("target") or "")
        home, target = split_target(daemon, raw) if raw else (daemon.host, raw)
        local = {**args, "target": target} if raw else args
        if home == daemon.host:
            return await LOCAL_OPS[name](daemon, local)
        if name not in ("lock_list", "lock_check"):  # a check names no holder
            local = {**local, "holder": holder_of(daemon, args)}
        if name == "lock_acquire" and not local.get("request_id"):
            local["request_id"] = uuid.uuid4().hex  # known here, so a lost answer can be retried
        peers = getattr(daemon, "peers", None)
        if peers is None:
            raise TransportError(f"home {home} unreachable: this meshd has no links")
        try:
            result: dict[str, Any] = await peers.call(home, "lock_op", {"op": name, "args": local},
                                                      extra_s=_float(args, "wait_s") or 0.0)
        except TransportError as exc:
            hint = f"{raw} is decided only by {home}; nothing was granted"
            if name == "lock_acquire":  # it may have been granted there, and only the answer lost
                hint = (f"{raw} is decided only by {home}; if the request reached it, it may be "
                        f"granted: retry with --request-id {local.get('request_id')} to get it")
            raise TransportError(f"home {home} unreachable: {exc.message}", hint=hint) from None
        return result
    return op


OPS = {name: _forwarding(name) for name in LOCAL_OPS}


async def peer_lock_op(daemon: LocksDaemon, args: dict[str, Any]) -> dict[str, Any]:
    """A lock op forwarded by another host: this host must be the target's home."""
    name = str(args.get("op"))
    if name not in LOCAL_OPS:
        raise UsageError(f"unknown lock op {name!r}")
    inner = dict(args.get("args") or {})
    if inner.get("target") and home_of(daemon, str(inner["target"])) != daemon.host:
        raise TransportError(f"{inner['target']} is not homed on {daemon.host}")
    return await LOCAL_OPS[name](daemon, inner)


# -- the lease ticker ----------------------------------------------------------------------
async def run_ticker(daemon: LocksDaemon, *, period_s: float = TICK_S) -> None:
    """Renew locks of live holders, release dead ones, expire leases, time out waits.

    Runs forever in the daemon's root TaskGroup.  A failed lock-store write
    (StateError) is fatal and propagates, so the daemon stops instead of
    granting from a memory the disk no longer matches.
    """
    svc = _service(daemon)
    while True:
        try:
            holders = await asyncio.to_thread(svc.holders)
            live = {h: liveness(daemon, h) for h in holders}
            out = await asyncio.to_thread(svc.tick, live)
            await _journal(daemon, out.events)
            nxt = await asyncio.to_thread(svc.seconds_to_next_deadline)
        except StateError:
            raise
        except MeshError as exc:
            log.warning("lock ticker: %s", exc)
            nxt = None
        await asyncio.sleep(period_s if nxt is None else min(period_s, max(0.005, nxt)))


def liveness(daemon: LocksDaemon, holder: str) -> Liveness:
    """Is the holder's pane (agent address) or shell process (``shell:u@host:pid``) alive?"""
    if holder.startswith("shell:"):
        who, _, pid = holder.removeprefix("shell:").rpartition(":")
        if who.rpartition("@")[2] != daemon.host or not pid.isdigit() or int(pid) <= 0:
            return Liveness.UNKNOWN
        return Liveness.ALIVE if _pid_alive(int(pid)) else Liveness.DEAD
    registry = getattr(daemon, "registry", None)
    if registry is None:
        return Liveness.UNKNOWN
    cfg = getattr(daemon, "cfg", None)
    alias_ttl = float(cfg.discovery.alias_ttl_s) if cfg is not None else 86400.0
    entry = registry.resolve(holder, time.time(), alias_ttl)
    if entry is None:
        # An address of this host that the registry no longer holds: its pane closed.
        return Liveness.DEAD if holder.startswith(f"{slug(daemon.host)}-") else Liveness.ABSENT
    if entry.agent.host == daemon.host:
        return Liveness.ALIVE
    peers = getattr(daemon, "peers", None)
    up = peers.hosts_up() if peers is not None else set()
    return Liveness.ALIVE if entry.agent.host in up else Liveness.UNKNOWN


# -- helpers -------------------------------------------------------------------------------
def grant_dict(svc: LockService, g: Grant, home: str, *, now: float | None = None) -> dict[str, Any]:
    now = svc.clock() if now is None else now
    return {"token": g.token, "mode": str(g.mode), "target": g.target, "holder": g.holder,
            "home": home, "expires_in": round(g.expires_at - now, 3), "ttl_s": g.ttl_s,
            "request_id": g.request_id}


def holder_of(daemon: LocksDaemon, args: dict[str, Any]) -> str:
    """``holder`` as given (agent address, ``--as``), else the caller's shell session."""
    holder = str(args.get("holder") or "").strip()
    if not holder and args.get("shell_pid"):
        user = str(args.get("shell_user") or "").strip() or "?"
        holder = f"shell:{user}@{daemon.host}:{int(args['shell_pid'])}"
    if not holder:
        raise UsageError("no lock holder: pass holder, or shell_user and shell_pid")
    if len(holder) > _MAX_HOLDER or any(c.isspace() or not c.isprintable() for c in holder):
        raise UsageError(f"bad holder {holder[:80]!r}: printable, no spaces, at most {_MAX_HOLDER} chars")
    return holder


_REMOTE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*):(/.*)$")


def split_target(daemon: LocksDaemon, target: str) -> tuple[str, str]:
    """(home host, target as the home names it).  ``HOST:/path`` is a path on HOST; a plain
    path is this host's; an ``@name`` is decided by the anchor (first line of peers.conf)."""
    m = _REMOTE.match(target)
    if m:
        host = m.group(1)
        return (daemon.host if host in _names_of_this_host(daemon.host) else host), m.group(2)
    return home_of(daemon, target), target


def home_of(daemon: LocksDaemon, target: str) -> str:
    """The host that decides ``target``: a path's is this host; an ``@name``'s is the anchor
    (first line of peers.conf; none means a one-host mesh, so this host)."""
    if not target.startswith("@"):
        return daemon.host
    peers = getattr(daemon, "peers", None)
    if peers is not None:
        return str(peers.anchor())
    lines = read_line_file(daemon.paths.peers_conf)
    anchor = lines[0].split()[0] if lines else daemon.host
    return daemon.host if anchor in _names_of_this_host(daemon.host) else anchor


def _home(daemon: LocksDaemon, target: str) -> str:
    home = home_of(daemon, target)
    if home != daemon.host:
        raise TransportError(f"home {home} unreachable: {target} is decided there",
                             hint="see `mesh peers`; the anchor is the first line of peers.conf")
    return home


def _names_of_this_host(host: str) -> set[str]:
    fqdn = socket.gethostname()
    return {host, fqdn, fqdn.split(".")[0], "localhost", "127.0.0.1", "::1"}


def _service(daemon: LocksDaemon) -> LockService:
    if daemon.locks is None:
        raise MeshError("the lock service is not started")
    return daemon.locks


def _target(args: dict[str, Any]) -> str:
    try:
        return normalize(str(args.get("target") or ""))
    except ValueError as exc:
        raise UsageError(str(exc), hint="a lock target is an absolute path or @name") from None


def _mode(args: dict[str, Any]) -> Mode:
    try:
        return Mode(str(args.get("mode") or "write"))
    except ValueError:
        raise UsageError(f"bad mode {args.get('mode')!r}",
                         hint="one of " + ", ".join(m.value for m in Mode)) from None


def _float(args: dict[str, Any], name: str) -> float | None:
    value = args.get(name)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a number of seconds, not {value!r}") from None


def _token(args: dict[str, Any]) -> int | None:
    value = args.get("token")
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UsageError(f"token must be a whole number, not {value!r}") from None


def _refusal(res: Queued | Conflict | Deadlock | Rejected, target: str) -> MeshError:
    if isinstance(res, Conflict):
        return LockConflict(f"{target}: {res.reason}",
                            hint="queue for it with --wait SECONDS; see `mesh lock list`")
    if isinstance(res, Deadlock):
        ring = " -> ".join([*res.cycle, res.cycle[0]])
        return LockConflict(f"deadlock: {ring}; this request was refused to break it",
                            hint="release what you hold and try again")
    if isinstance(res, Rejected):
        return LockRejected(f"{target}: {res.reason}")
    return MeshError(f"{target}: still queued at position {res.position}")


async def _journal(daemon: LocksDaemon, events: list[tuple[str, dict[str, Any]]]) -> None:
    for kind, body in events:
        await daemon.record(kind, body)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
