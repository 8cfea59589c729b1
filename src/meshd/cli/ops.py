"""Operator commands of ``mesh``: ``tools``, ``doctor``, ``demo``.

The work lives in :mod:`meshd.toolcatalog`, :mod:`meshd.doctor` and
:mod:`meshd.demo`; this module only parses options and prints.  Data goes to
stdout (``--json`` on the reads), progress and warnings to stderr.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from typing import Any

import click

from meshd.errors import EXIT_USAGE, MeshError
from meshd.paths import StatePaths

_MARK = {"ok": "✓", "warn": "!", "fail": "✗"}


def _paths() -> StatePaths:
    return StatePaths.from_env()


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


# -- tools ----------------------------------------------------------------------------------
@click.command()
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.option("--timeout", default=5.0, show_default=True,
              help="seconds each `--version` may take")
def tools(as_json: bool, timeout: float) -> None:
    """Which agent CLIs are installed, their versions, and how to run each headless."""
    from meshd.toolcatalog import probe_all

    probes = probe_all(timeout_s=timeout)
    if as_json:
        _echo_json([p.to_dict() for p in probes])
        return
    for p in probes:
        mark = "✓" if p.installed else "✗"
        version = p.version or ("?" if p.installed else "not installed")
        click.echo(f"{mark} {p.tool.name:<13} {version:<14} {p.path or ''}")
        if p.error:
            click.echo(f"    version check: {p.error}")
        click.echo(f"    headless: {shlex.join(p.tool.headless_argv)}")
        click.echo(f"    options:  {p.tool.notes}")


# -- doctor ---------------------------------------------------------------------------------
@click.command()
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def doctor(as_json: bool) -> None:
    """Check this host's meshd setup; exit 1 if any check fails."""
    from meshd.doctor import failed, run_all

    checks = run_all()
    if as_json:
        _echo_json([c.to_dict() for c in checks])
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            click.echo(f"{_MARK[c.status.value]} {c.name:<{width}}  {c.detail}")
            if c.fix and c.status.value != "ok":
                click.echo(f"  {'':<{width}}  fix: {c.fix}")
        bad = [c for c in checks if c.status.value != "ok"]
        click.echo(f"\n{len(checks) - len(bad)} ok, "
                   f"{sum(c.status.value == 'warn' for c in bad)} warning(s), "
                   f"{sum(c.status.value == 'fail' for c in bad)} failure(s)")
    if failed(checks):
        sys.exit(1)


# -- demo -----------------------------------------------------------------------------------
@click.command()
@click.option("--session", "name", default="mesh-demo", show_default=True,
              help="tmux session to create")
@click.option("--rounds", default=1, show_default=True, type=click.IntRange(0, 50),
              help="rounds of demo messages")
@click.option("--replace", is_flag=True, help="kill an existing session of that name first")
@click.option("--no-attach", is_flag=True, help="do not attach when done")
@click.option("--no-daemon", is_flag=True,
              help="do not start meshd: notify-pane delivers without it (degraded)")
@click.pass_context
def demo(ctx: click.Context, name: str, rounds: int, replace: bool, no_attach: bool,
         no_daemon: bool) -> None:
    """Three demo agents (architect, builder, reviewer) in tmux, messaging each other."""
    from meshd import config as config_mod
    from meshd.demo import session
    from meshd.tmux.runner import Tmux

    p = _paths()
    cfg = config_mod.load(p)
    tmux = Tmux.from_env(cfg.tmux.socket, cfg.tmux.command_timeout_s)
    panes = session.create(tmux, name, replace=replace)
    _note(f"created tmux session {name!r} with windows "
          + ", ".join(f"{x.role} ({x.pane_id})" for x in panes))
    slow = session.wait_ready(tmux, panes)
    if slow:
        _note(f"warning: no prompt yet from {', '.join(slow)}; see its window")
    daemon_up = _ensure_daemon(ctx, p, start=not no_daemon)
    addr = session.addresses(tmux, config_mod.host_name(cfg, p), panes)
    click.echo("agents:")
    for x in panes:
        click.echo(f"  {addr.get(x.role, '?'):<40} role={x.role}")
    sent = [session.send(m, addr) for m in session.script(addr, rounds)]
    if sent:
        click.echo("messages (each asks its recipient to relay it on):")
    for s in sent:
        status = "ok" if s.exit_code == 0 else f"exit {s.exit_code}"
        click.echo(f"  {s.message.sender} -> {s.message.to}: {status}: {s.output}")
    _how_to_watch(tmux, name, addr, daemon_up)
    _attach(tmux, name, no_attach)
    if any(s.exit_code for s in sent):
        sys.exit(max(s.exit_code for s in sent))


def _note(text: str) -> None:
    click.echo(text, err=True)


def _ensure_daemon(ctx: click.Context, p: StatePaths, start: bool) -> bool:
    """Start meshd the way `mesh up` does if it is down, then resync; False if it stays down."""
    from meshd.cli import mesh_main
    from meshd.daemon.pidlock import running_pid

    if running_pid(p.pidfile) is None:
        if not start:
            _note("meshd is not running; notify-pane delivers without it (degraded)")
            return False
        try:
            ctx.invoke(mesh_main.up, timeout=10.0)
        except MeshError as exc:
            _note(f"warning: could not start meshd ({exc.message.splitlines()[0]}); "
                  "the demo runs degraded: notify-pane delivers without the daemon")
            return False
    try:
        r = mesh_main.call("resync", timeout_s=10)
    except MeshError as exc:
        _note(f"warning: resync failed: {exc.message}")
        return False
    _note(f"meshd resynced: {r['agents_local']} agent(s) on this host")
    return True


def _how_to_watch(tmux: Any, name: str, addr: dict[str, str], daemon_up: bool) -> None:
    first = next(iter(addr.values()), "ADDR")
    rows = [(shlex.join(tmux.argv("attach", "-t", name)), "the three agents"),
            ("mesh agents", "who is in the mesh")]
    rows += ([("mesh inbox", "delivered messages"), ("mesh log", "the journal")] if daemon_up
             else [("mesh up", "start meshd (then mesh inbox, mesh log)")])
    rows += [(f"notify-pane {first} 'hello'", "send one yourself"),
             (shlex.join(tmux.argv("kill-session", "-t", name)), "clean up")]
    width = max(len(cmd) for cmd, _ in rows)
    click.echo("\nwatch it:")
    for cmd, what in rows:
        click.echo(f"  {cmd:<{width}}  {what}")


def _attach(tmux: Any, name: str, no_attach: bool) -> None:
    if no_attach or not sys.stdout.isatty() or not sys.stdin.isatty():
        return
    inside = os.environ.get("TMUX", "").split(",")[0]
    if inside:
        same = tmux.socket is None or os.path.realpath(inside) == os.path.realpath(tmux.socket)
        hint = (f"tmux switch-client -t {shlex.quote(name)}" if same
                else f"{shlex.join(tmux.argv('attach', '-t', name))} (from another terminal)")
        click.echo(f"\nyou are inside tmux; to look at the demo: {hint}")
        return
    sys.stdout.flush()
    try:
        os.execvp("tmux", tmux.argv("attach-session", "-t", f"={name}"))
    except OSError as exc:
        click.echo(f"cannot attach: {exc}", err=True)
        sys.exit(EXIT_USAGE)


COMMANDS: list[click.Command] = [tools, doctor, demo]
