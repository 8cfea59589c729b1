"""``mesh``: the operator and agent CLI.  A thin client of the daemon.

Data goes to stdout (``--json`` on every read), diagnostics to stderr, and
errors exit with the codes of :mod:`meshd.errors`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import click

from meshd import __version__
from meshd.cli import ops, task_cmd
from meshd.cli.lock_cmd import lock
from meshd.errors import DaemonNotRunning, MeshError, UsageError
from meshd.paths import StatePaths
from meshd.transport import client


def paths() -> StatePaths:
    return StatePaths.from_env()


def call(op: str, args: dict[str, Any] | None = None, timeout_s: float = 30.0) -> Any:
    return client.call(paths().socket, op, args, timeout_s)


def emit(data: Any, as_json: bool, text: str) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else text)


class MeshGroup(click.Group):
    """Turns MeshErrors into their exit codes with a one-line message."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MeshError as exc:
            click.echo(f"mesh: {exc}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=MeshGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mesh")
def main() -> None:
    """Agents in tmux panes, on one host or many: find, message, share work."""


# -- daemon lifecycle ---------------------------------------------------------------------
@main.command()
@click.option("--timeout", default=10.0, show_default=True, help="seconds to wait for ready")
def up(timeout: float) -> None:
    """Start meshd in the background (a second start says so and exits 1)."""
    from meshd.daemon.pidlock import running_pid

    p = paths()
    pid = running_pid(p.pidfile)
    if pid:
        raise MeshError(f"meshd is already running (pid {pid})", hint="`mesh status`")
    from meshd.files import private_dir

    private_dir(p.state_dir)
    with os.fdopen(os.open(p.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "meshd.cli.daemon_main", "run"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = p.log.read_text(errors="replace").splitlines()[-5:]
            raise MeshError(f"meshd exited with status {proc.returncode}:\n  " + "\n  ".join(tail))
        try:
            info = call("ping", timeout_s=1)
            click.echo(f"meshd started (pid {info['pid']}, host {info['host']}); log: {p.log}")
            return
        except DaemonNotRunning:
            time.sleep(0.05)
    raise MeshError(f"meshd did not become ready within {timeout:g} s; see {p.log}")


@main.command()
@click.option("--timeout", default=10.0, show_default=True, help="seconds to wait for exit")
def down(timeout: float) -> None:
    """Stop meshd."""
    from meshd.daemon.pidlock import running_pid

    p = paths()
    pid = running_pid(p.pidfile)
    if pid is None:
        click.echo("meshd is not running")
        return
    try:
        call("stop", timeout_s=3)
    except MeshError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running_pid(p.pidfile) is None:
            click.echo(f"meshd stopped (pid {pid})")
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    click.echo(f"meshd did not stop within {timeout:g} s; killed pid {pid}", err=True)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def status(as_json: bool) -> None:
    """Is meshd running, and what does it see."""
    try:
        s = call("status")
    except DaemonNotRunning as exc:
        if as_json:
            click.echo(json.dumps({"running": False, "error": exc.message}))
        else:
            click.echo(f"meshd: not running ({paths().socket})\n  fix: mesh up")
        sys.exit(exc.exit_code)
    s["running"] = True
    text = (f"meshd {s['version']} running, pid {s['pid']}, up {s['uptime_s']:.0f} s, "
            f"generation {s['generation']}\n"
            f"host {s['host']}   agents here {s['agents_local']}, mesh {s['agents_total']}\n"
            f"tmux {s['tmux_socket']} ({'up' if s['tmux_alive'] else 'no server'})   "
            f"journal {s['journal_events']} events\n"
            f"state {s['home']}\n"
            f"hardware {_hw(s['hardware'])}")
    emit(s, as_json, text)


def _hw(h: dict[str, Any]) -> str:
    gib = 1 << 30
    gpus = ", ".join(f"{g['name']} {g['used_bytes'] / gib:.1f}/{g['total_bytes'] / gib:.1f} GiB"
                     for g in h["gpus"]) or "no GPU"
    return (f"{h['cpus']} CPUs, RAM {h['ram_available_bytes'] / gib:.1f} GiB free of "
            f"{h['ram_total_bytes'] / gib:.1f}, {gpus}")


@main.command()
def reload() -> None:
    """Re-read config.toml (the daemon keeps its config if the file is bad)."""
    call("reload")
    click.echo("config reloaded")


@main.command()
def resync() -> None:
    """Rescan tmux now (the systemd timer runs this every 5 minutes)."""
    try:
        r = call("resync")
    except DaemonNotRunning:
        click.echo("meshd is not running; nothing to resync", err=True)
        return
    click.echo(f"resynced: {r['changes']} change(s), {r['agents_local']} agent(s) here")


@main.command()
@click.argument("action", type=click.Choice(["on", "off"]))
@click.argument("session", required=False, default="")
def hook(action: str, session: str) -> None:
    """Called by tmux hooks: a session/window/pane changed.  Never fails loudly."""
    # tmux shows hook errors to the user; a stopped daemon is not their problem.
    with contextlib.suppress(MeshError):
        call("hook", {"action": action, "session": session}, timeout_s=2)


# -- agents and messages ------------------------------------------------------------------
@main.command()
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def agents(as_json: bool) -> None:
    """List the agents of the mesh."""
    from meshd.cli.notify import _agents

    items = _agents(paths())
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo("no agents (is tmux running? `mesh doctor`)")
    for x in items:
        term = f" (term {x['architect_term']})" if x.get("architect_term") else ""
        badge = f"  ARCHITECT{term}" if x.get("architect") else ""
        role = f" role={x['role']}" if x.get("role") else ""
        click.echo(f"{x['address']:<40} {x['tool']:<12} {x.get('state', '?'):<9} "
                   f"{x['pane']:<5}{role}{badge}")


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def send(ctx: click.Context) -> None:
    """Same as notify-pane: send ADDR MESSAGE... (see `notify-pane --help`)."""
    from meshd.cli.notify import main as notify_main

    sys.exit(notify_main(list(ctx.args)))


@main.command()
@click.argument("address", required=False)
@click.option("-n", default=50, show_default=True, help="how many messages")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def inbox(address: str | None, n: int, as_json: bool) -> None:
    """Messages that reached ADDR (or everyone), with the pane state at delivery."""
    items = call("inbox", {"address": address, "n": n})
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    for e in items:
        b = e["body"]
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"]))
        what = (f"delivered ({b.get('state')})" if e["kind"] == "msg.delivered"
                else f"REFUSED: {b.get('reason', '').splitlines()[0]}")
        click.echo(f"{when}  {b.get('id')}  {b.get('from')} -> {b.get('to')}  {what}")


@main.command()
@click.option("-n", default=50, show_default=True, help="how many events")
@click.option("--kind", "kinds", multiple=True, help="only these event kinds")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def log(n: int, kinds: tuple[str, ...], as_json: bool) -> None:
    """The journal's most recent events."""
    items = call("log", {"n": n, "kinds": list(kinds)})
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    for e in items:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"]))
        body = json.dumps(e["body"], ensure_ascii=False)
        click.echo(f"{when}  {e['origin']}#{e['seq']:<5} {e['kind']:<14} {body[:120]}")


# -- peers --------------------------------------------------------------------------------
@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def peers(ctx: click.Context, as_json: bool) -> None:
    """The hosts in ~/.agents/peers.conf and the state of each link."""
    if ctx.invoked_subcommand is not None:
        return
    from meshd.files import read_line_file

    try:
        items = call("peers")
    except DaemonNotRunning:
        items = [{"alias": a, "host": None, "up": False, "rtt_ms": None, "last_seen": None,
                  "lag_events": None, "error": "meshd is not running", "attempts": 0}
                 for a in read_line_file(paths().peers_conf)]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo(f"no peers (add SSH aliases to {paths().peers_conf}, or `mesh peers add ALIAS`)")
    for p in items:
        state = "up" if p["up"] else "DOWN"
        rtt = f"{p['rtt_ms']:.1f} ms" if p.get("rtt_ms") is not None else "-"
        seen = time.strftime("%H:%M:%S", time.localtime(p["last_seen"])) if p.get("last_seen") else "-"
        lag = p.get("lag_events")
        click.echo(f"{p['alias']:<24} {p.get('host') or '?':<16} {state:<5} rtt {rtt:<9} "
                   f"seen {seen:<8} lag {lag if lag is not None else '-':<6} {p.get('error') or ''}")


_PUSH = click.option("--push", is_flag=True,
                     help="also write the new list on every host linked now")


@peers.command("add")
@click.argument("alias")
@_PUSH
def peers_add(alias: str, push: bool) -> None:
    """Add an SSH alias to peers.conf (the daemon links to it within a second)."""
    _edit_peers(lambda lines: lines if alias in lines else [*lines, alias], push)
    click.echo(f"added {alias}")


@peers.command("remove")
@click.argument("alias")
@_PUSH
def peers_remove(alias: str, push: bool) -> None:
    """Remove an SSH alias from peers.conf."""
    _edit_peers(lambda lines: [x for x in lines if x != alias], push)
    click.echo(f"removed {alias}")


def _edit_peers(change: Any, push: bool) -> None:
    from meshd.files import check_aliases, read_line_file, write_line_file

    p = paths()
    lines = check_aliases(change(read_line_file(p.peers_conf)))
    write_line_file(p.peers_conf, lines)
    if push:
        pushed = call("peers_push", {"peers": lines})
        for host, outcome in sorted(pushed.items()):
            click.echo(f"  {host}: {outcome}")



# -- configuration ------------------------------------------------------------------------
@main.group()
def config() -> None:
    """Read and edit ~/.agents/config.toml (comments are kept)."""


@config.command("init")
@click.option("--force", is_flag=True, help="overwrite an existing file")
def config_init(force: bool) -> None:
    """Write a documented default config.toml."""
    from meshd.config import render_default
    from meshd.files import atomic_write, private_dir

    p = paths()
    if p.config.exists() and not force:
        raise UsageError(f"{p.config} already exists", hint="add --force to overwrite")
    private_dir(p.home)
    atomic_write(p.config, render_default())
    click.echo(f"wrote {p.config}")


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def config_show(as_json: bool) -> None:
    """The effective configuration (file + MESHD_* environment + defaults)."""
    from meshd.config import as_dict, iter_keys, load

    cfg = load(paths())
    if as_json:
        click.echo(json.dumps(as_dict(cfg), indent=2))
        return
    flat = as_dict(cfg)
    for dotted, f in iter_keys():
        node: Any = flat
        for part in dotted.split("."):
            node = node[part]
        click.echo(f"{dotted} = {node!r}    # {f.metadata['doc']}")


@config.command("check")
def config_check() -> None:
    """Validate config.toml; exit 78 with the key and reason when it is bad."""
    from meshd.config import load

    load(paths())
    click.echo(f"{paths().config}: ok")


@config.command("set")
@click.argument("key")
@click.argument("value")
def config_set(key: str, value: str) -> None:
    """Set KEY (section.key) to VALUE, validated, keeping the file's comments."""
    from meshd.config import _coerce, iter_keys, load
    from meshd.files import edit_toml

    fields = dict(iter_keys())
    if key not in fields:
        raise UsageError(f"unknown key {key}", hint="see `mesh config show`")
    typed = _coerce(key, fields[key], value, "command line")
    p = paths()
    old = p.config.read_bytes() if p.config.exists() else None
    edit_toml(p.config, key, typed)
    try:
        load(p)
    except MeshError:
        if old is not None:
            p.config.write_bytes(old)
        raise
    click.echo(f"{key} = {typed!r}  (running daemon: `mesh reload`)")


@config.command("path")
def config_path() -> None:
    """Print the config file's path."""
    click.echo(str(paths().config))


for _cmd in ops.COMMANDS:
    main.add_command(_cmd)
main.add_command(lock)
main.add_command(task_cmd.task)
main.add_command(task_cmd.spawn)


if __name__ == "__main__":
    main()
