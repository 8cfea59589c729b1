"""``mesh lock``: take, renew, release, list and check locks; run a command under one.

A thin client of the daemon's ``lock_*`` ops (docs/locks.md).  TARGET is a path
(made absolute, symlinks of its existing part resolved; a folder covers what
is inside) or ``@name``.  The holder is the agent of ``$TMUX_PANE``, else
``--as ADDR``, else this shell session (``shell:<user>@<host>:<pid>``; its
locks live while that shell lives).

Exit codes: 0 granted / released / valid, 1 usage, 3 conflict, deadlock, gave
up waiting, rejected or token not valid, 4 daemon or home unreachable.  ``run``
exits with the command's status (3 if the lock was lost while it ran).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from types import FrameType
from typing import Any

import click

from meshd.errors import EXIT_REFUSED, MeshError, Refused, TransportError, UnknownAgent
from meshd.locks.modes import Mode
from meshd.paths import StatePaths
from meshd.transport import client

MODES = [m.value for m in Mode]


class LockGroup(click.Group):
    """Turns MeshErrors into their exit codes (also when used outside ``mesh``)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MeshError as exc:
            click.echo(f"mesh lock: {exc}", err=True)
            sys.exit(exc.exit_code)


def _call(op: str, args: dict[str, Any], timeout_s: float = 30.0) -> Any:
    return client.call(StatePaths.from_env().socket, op, args, timeout_s)


_REMOTE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*:/")


def normalize_target(target: str) -> str:
    """``@name`` as is; ``HOST:/path`` (a path on another host) as is; a local path made
    absolute with symlinks resolved."""
    if target.startswith("@") or _REMOTE.match(target):
        return target
    return os.path.realpath(os.path.abspath(os.path.expanduser(target)))


def holder_args(as_addr: str | None, *, session_pid: int | None = None) -> dict[str, Any]:
    """Who holds the lock: ``--as``, the agent of this tmux pane, or this shell session."""
    if as_addr:
        return {"holder": as_addr}
    if os.environ.get("TMUX_PANE"):
        from meshd.cli.notify import caller_args

        with contextlib.suppress(UnknownAgent):
            return {"holder": _call("whoami", caller_args(), timeout_s=5)["address"]}
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return {"shell_user": user, "shell_pid": session_pid or os.getppid()}


def _acquire(target: str, mode: str, wait_s: float, ttl_s: float | None, as_addr: str | None,
             request_id: str | None, session_pid: int | None = None) -> dict[str, Any]:
    if wait_s < 0:
        raise click.BadParameter("must be >= 0", param_hint="--wait")
    args = {"target": normalize_target(target), "mode": mode, "wait_s": wait_s, "ttl_s": ttl_s,
            "request_id": request_id or uuid.uuid4().hex,
            **holder_args(as_addr, session_pid=session_pid)}
    return dict(_call("lock_acquire", args, timeout_s=30.0 + wait_s))


def _emit(data: Any, as_json: bool, text: str) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else text)


_WAIT = click.option("--wait", "wait_s", type=float, default=0.0, show_default=True,
                     help="seconds to queue (FIFO) for the lock; 0 fails at once")
_TTL = click.option("--ttl", "ttl_s", type=float, default=None,
                    help="lease in seconds (default: the daemon's, 15); renewed while the holder lives")
_AS = click.option("--as", "as_addr", default=None, metavar="ADDR", help="hold it as ADDR")
_JSON = click.option("--json", "as_json", is_flag=True, help="print JSON")
_MODE = click.option("--mode", type=click.Choice(MODES), default="write", show_default=True)


@click.group("lock", cls=LockGroup)
def lock() -> None:
    """Locks on paths (a folder covers what is inside) and @names, with fencing tokens."""


@lock.command("acquire")
@click.argument("target")
@_MODE
@_WAIT
@_TTL
@_AS
@click.option("--request-id", default=None, help="retry a request whose answer was lost (same id)")
@_JSON
def acquire(target: str, mode: str, wait_s: float, ttl_s: float | None, as_addr: str | None,
            request_id: str | None, as_json: bool) -> None:
    """Take a lock; print its fencing token (exit 3 on conflict or deadlock)."""
    g = _acquire(target, mode, wait_s, ttl_s, as_addr, request_id)
    if as_json:
        click.echo(json.dumps(g, indent=2))
        return
    click.echo(g["token"])
    how = " (already held)" if g.get("how") == "held" else ""
    click.echo(f"{g['mode']} lock on {g['target']} for {g['holder']}{how}: token {g['token']}, "
               f"home {g['home']}, lease {g['expires_in']:.0f} s (renewed while the holder lives)",
               err=True)


@lock.command("release")
@click.argument("target")
@click.option("--token", type=int, default=None, help="only if this is the grant's token")
@_AS
@_JSON
def release(target: str, token: int | None, as_addr: str | None, as_json: bool) -> None:
    """Give a lock back."""
    r = _call("lock_release", {"target": normalize_target(target), "token": token,
                               **holder_args(as_addr)})
    _emit(r, as_json, f"released {r['mode']} lock on {r['target']} (token {r['token']})")


@lock.command("renew")
@click.argument("target")
@click.option("--token", type=int, default=None, help="only if this is the grant's token")
@_TTL
@_AS
@_JSON
def renew(target: str, token: int | None, ttl_s: float | None, as_addr: str | None,
          as_json: bool) -> None:
    """Restart a lock's lease (same token)."""
    g = _call("lock_renew", {"target": normalize_target(target), "token": token, "ttl_s": ttl_s,
                             **holder_args(as_addr)})
    _emit(g, as_json, f"renewed {g['mode']} lock on {g['target']} (token {g['token']}, "
                      f"lease {g['expires_in']:.0f} s)")


@lock.command("check")
@click.argument("target")
@click.option("--token", type=int, required=True, help="the fencing token to check")
@_JSON
def check(target: str, token: int, as_json: bool) -> None:
    """Exit 0 only while TOKEN is the live grant of a lock covering TARGET, else 3."""
    r = _call("lock_check", {"target": normalize_target(target), "token": token})
    if as_json:
        click.echo(json.dumps(r, indent=2))
    elif r["valid"]:
        click.echo(f"valid: token {token} ({r['mode']} on {r['locked']} by {r['holder']})")
    else:
        click.echo(f"not valid: {r['reason']}", err=True)
    if not r["valid"]:
        sys.exit(EXIT_REFUSED)


@lock.command("list")
@_JSON
def list_(as_json: bool) -> None:
    """Locks held, waiters and lock-delays on this home."""
    r = _call("lock_list", {})
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    click.echo(f"home {r['home']}, last token {r['fence']}")
    if not (r["grants"] or r["waiters"] or r["lock_delays"]):
        click.echo("no locks")
    for g in r["grants"]:
        click.echo(f"  {g['token']:>6}  {g['mode']:<8} {g['target']}  {g['holder']}  "
                   f"expires in {g['expires_in']:.1f} s")
    for w in r["waiters"]:
        click.echo(f"  wait #{w['position']:<2} {w['mode']:<8} {w['target']}  {w['holder']}  "
                   f"for {w['waiting_s']:.1f} s, behind {', '.join(w['blocked_by']) or '(lock-delay)'}")
    for d in r["lock_delays"]:
        click.echo(f"  delay   {d['mode']:<8} {d['target']}  (lease of {d['holder']} ran out; "
                   f"free for others in {d['ends_in']:.1f} s)")



@lock.command("run")
@click.argument("target")
@_MODE
@_WAIT
@_TTL
@_AS
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(target: str, mode: str, wait_s: float, ttl_s: float | None, as_addr: str | None,
        command: tuple[str, ...]) -> None:
    """Run COMMAND while holding the lock: mesh lock run TARGET --mode write -- CMD ARGS...

    The command gets MESH_LOCK_TOKEN, MESH_LOCK_TARGET, MESH_LOCK_MODE and
    MESH_LOCK_HOLDER.  The lease is renewed while it runs; if the lock is lost
    (renewal refused, or no renewal confirmed within half the lease) the command
    is stopped and `run` exits 3.  Otherwise it exits with the command's status.
    Outside tmux the holder is this `run` process, so a killed `run` frees the lock.
    """
    sent = time.monotonic()
    g = _acquire(target, mode, wait_s, ttl_s, as_addr, None, session_pid=os.getpid())
    if _REMOTE.match(target):  # HOST:/path: renew, release and check it on HOST, not here
        g = {**g, "target": f"{target.split(':', 1)[0]}:{g['target']}"}
    env = {**os.environ, "MESH_LOCK_TOKEN": str(g["token"]), "MESH_LOCK_TARGET": g["target"],
           "MESH_LOCK_MODE": g["mode"], "MESH_LOCK_HOLDER": g["holder"]}
    try:
        proc = subprocess.Popen(list(command), env=env)
    except OSError as exc:
        _give_back(g)
        raise MeshError(f"cannot run {command[0]}: {exc.strerror or exc}") from None
    rc, lost = _hold(proc, g, sent)
    _give_back(g)
    if lost:
        sys.exit(EXIT_REFUSED)
    sys.exit(rc if rc >= 0 else 128 - rc)


def _hold(proc: subprocess.Popen[bytes], g: dict[str, Any], sent: float) -> tuple[int, bool]:
    """Renew every third of the lease until the command ends; stop it if the lock is lost."""
    ttl = float(g["ttl_s"])
    ok_since = sent        # the home started the lease no earlier than this
    forward = _forward_signals(proc)
    try:
        while True:
            try:
                return proc.wait(timeout=ttl / 3), False
            except subprocess.TimeoutExpired:
                pass
            t = time.monotonic()
            try:
                _call("lock_renew", {"target": g["target"], "token": g["token"], "holder": g["holder"]},
                      timeout_s=ttl / 4)
                ok_since = t
                continue
            except Refused as exc:
                why = exc.message
            except TransportError as exc:
                if time.monotonic() - ok_since < ttl / 2:
                    continue
                why = f"no renewal confirmed for {time.monotonic() - ok_since:.1f} s ({exc.message})"
            click.echo(f"mesh lock run: lost the lock on {g['target']}: {why}; stopping the command",
                       err=True)
            _stop(proc)
            return proc.wait(), True
    finally:
        for sig, old in forward.items():
            signal.signal(sig, old)


def _forward_signals(proc: subprocess.Popen[bytes]) -> dict[int, Any]:
    """SIGTERM/SIGHUP go on to the command and `run` keeps going, so that it can release.
    SIGINT (Ctrl-C) already reaches the command from the terminal: `run` only outlives it."""
    def forward(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    def ignore(signum: int, frame: FrameType | None) -> None:
        pass

    return {signal.SIGINT: signal.signal(signal.SIGINT, ignore),
            signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
            signal.SIGHUP: signal.signal(signal.SIGHUP, forward)}


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


def _give_back(g: dict[str, Any]) -> None:
    if g.get("how") == "held":       # it was held before `run`; leave it held
        return
    try:
        _call("lock_release", {"target": g["target"], "token": g["token"], "holder": g["holder"]},
              timeout_s=10)
    except MeshError as exc:
        click.echo(f"mesh lock run: could not release {g['target']}: {exc} "
                   "(its lease will run out)", err=True)
