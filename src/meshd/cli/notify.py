"""``notify-pane``: agent-mesh compatible messaging, a thin client of meshd.

    notify-pane ADDR MESSAGE...            deliver a message
    notify-pane ADDR --file PATH [MESSAGE] copy PATH into ~/.agent-inbox/<sender>/ and say so
    notify-pane ADDR -                     read the message from stdin
    notify-pane --list | --whoami

Exit codes: 0 delivered, 1 usage or unreadable file, 2 unknown agent,
3 recipient not ready (draft, dialog, busy, copy-mode), 4 tmux or transport failure.

Start-up matters (agents call this constantly), so this module imports only
the stdlib and meshd's light modules; the degraded path (daemon down) pulls
in the tmux scanner and the classifier only when it runs.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

from meshd.errors import (
    EXIT_OK,
    EXIT_USAGE,
    DaemonNotRunning,
    MeshError,
    UnknownAgent,
    UsageError,
)
from meshd.paths import StatePaths
from meshd.transport import client

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs start-up time
if TYPE_CHECKING:
    from typing import Any

USAGE = """\
usage: notify-pane ADDR MESSAGE...
       notify-pane ADDR --file PATH [MESSAGE...]
       notify-pane ADDR -            (message from stdin)
       notify-pane --list [--json] | --whoami [--json]

options:
  --file PATH      copy PATH to the recipient's ~/.agent-inbox/<sender>/ and name it
  --force          deliver over a half-typed draft (also FORCE_SEND=1)
  --force-dialog   type into an open permission/menu dialog (dangerous)
  --wait[=SECONDS] hold the message until the pane can take it (default 60 s)
  --queue          if the recipient's host is unreachable, keep the message and deliver it
                   exactly once when the host is back
  --json           print the result as JSON
exit: 0 delivered, 1 usage, 2 unknown agent, 3 recipient not ready, 4 tmux/transport failure
"""


_OPTION = re.compile(r"^--?[a-z][a-z-]*(=.*)?$")


class Args:
    """Parsed command line (a plain class: dataclasses cost start-up time here)."""

    def __init__(self, force: bool = False) -> None:
        self.mode = "send"              # send | list | whoami | help
        self.to = ""
        self.words: list[str] = []
        self.file: str | None = None
        self.force = force
        self.force_dialog = False
        self.wait_s = 0.0
        self.json = False
        self.queue = False


def parse(argv: list[str], env: dict[str, str]) -> Args:
    a = Args(force=env.get("FORCE_SEND", "") not in ("", "0"))
    it = iter(argv)
    rest: list[str] = []
    for tok in it:
        if tok == "--":
            rest.extend(it)
            break
        if tok in ("-h", "--help"):
            a.mode = "help"
        elif tok in ("--list", "-l"):
            a.mode = "list"
        elif tok == "--whoami":
            a.mode = "whoami"
        elif tok == "--json":
            a.json = True
        elif tok == "--force":
            a.force = True
        elif tok == "--queue":
            a.queue = True
        elif tok == "--force-dialog":
            a.force_dialog = True
        elif tok == "--wait" or tok.startswith("--wait="):
            a.wait_s = _seconds(tok.partition("=")[2] or "60")
        elif tok == "--file" or tok.startswith("--file="):
            a.file = tok.partition("=")[2] or next(it, None)
            if not a.file:
                raise UsageError("--file needs a PATH")
        elif _OPTION.match(tok) and len(rest) < 2:
            # Once the message has begun, unknown dash words are text ("-----BEGIN KEY-----").
            raise UsageError(f"unknown option {tok}", hint="see notify-pane --help")
        else:
            rest.append(tok)
    if a.mode == "send":
        if not rest:
            raise UsageError("missing recipient address", hint="notify-pane ADDR MESSAGE")
        a.to, a.words = rest[0], rest[1:]
    return a


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise UsageError(f"--wait={text}: not a number of seconds") from None
    if v < 0:
        raise UsageError("--wait must be >= 0")
    return v


def message_text(a: Args) -> str:
    if a.words == ["-"] or (not a.words and not a.file and not sys.stdin.isatty()):
        data = sys.stdin.buffer.read()
        return data.decode("utf-8", errors="replace")
    if not a.words and not a.file:
        raise UsageError("missing message", hint="notify-pane ADDR MESSAGE (or --file PATH)")
    return " ".join(w.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                    for w in a.words)


def fallback_sender() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname().split('.')[0]}"


def caller_args() -> dict[str, Any]:
    return {"sender_pane": os.environ.get("TMUX_PANE", ""),
            "sender_socket": os.environ.get("TMUX", "").split(",")[0],
            "sender": os.environ.get("MESH_SENDER") or fallback_sender()}


def run(argv: list[str], env: dict[str, str]) -> int:
    a = parse(argv, env)
    paths = StatePaths.from_env(env)
    if a.mode == "help":
        print(USAGE, end="")
        return EXIT_OK
    if a.mode == "list":
        return _list(paths, a)
    if a.mode == "whoami":
        return _whoami(paths, a)
    text = message_text(a)
    req: dict[str, Any] = {"to": a.to, "text": text, "force": a.force,
                           "force_dialog": a.force_dialog, "wait_s": a.wait_s, **caller_args()}
    if a.file:
        src = Path(a.file).resolve()
        if not os.access(src, os.R_OK) or not src.is_file():
            raise UsageError(f"cannot read {a.file}: not a readable regular file")
        req["file_src"] = str(src)
    if a.queue:
        req["queue"] = True
    try:
        result = client.call(paths.socket, "send", req)
    except DaemonNotRunning:
        from meshd.cli.degraded import send_direct

        if a.file:
            req["file"] = str(_deposit(paths, a.file, _sender_name(paths)))
        result = send_direct(paths, req)
        print("notify-pane: meshd is not running; delivered directly without it "
              "(recorded for the journal at next start)", file=sys.stderr)
    _report(a, result)
    return EXIT_OK


def _sender_name(paths: StatePaths) -> str:
    from meshd.cli.degraded import whoami_direct

    try:
        me = whoami_direct(paths, caller_args())
    except MeshError:
        me = None
    return str(me["address"]) if me else os.environ.get("MESH_SENDER") or fallback_sender()


def _deposit(paths: StatePaths, path: str, sender: str) -> Path:
    from meshd.config import load
    from meshd.delivery.inbox import deposit

    return deposit(paths.inbox, sender, Path(path), load(paths).delivery.max_file_bytes)


def _report(a: Args, result: dict[str, Any]) -> None:
    if a.json:
        print(json.dumps(result, indent=2))
        return
    if result.get("queued"):
        print(f"queued {result.get('message_id')} for {result.get('to')}: its host is unreachable; "
              "it will be delivered once when the host is back")
        return
    ok = "delivered" if result.get("submitted") else "pasted (submit not confirmed)"
    print(f"{ok} {result.get('message_id')} to {result.get('to')} "
          f"[{result.get('tool')}, was {result.get('state')}]")
    if not result.get("submitted") and not result.get("duplicate"):
        print("notify-pane: the text is in the pane but Enter could not be confirmed; "
              "check the pane", file=sys.stderr)


def _agents(paths: StatePaths) -> list[dict[str, Any]]:
    try:
        return list(client.call(paths.socket, "agents"))
    except DaemonNotRunning:
        from meshd.cli.degraded import list_direct

        print("notify-pane: meshd is not running; listing this host's panes directly",
              file=sys.stderr)
        return list_direct(paths)


def _list(paths: StatePaths, a: Args) -> int:
    agents = _agents(paths)
    if a.json:
        print(json.dumps(agents, indent=2))
        return EXIT_OK
    for x in agents:
        mark = " *architect*" if x.get("architect") else ""
        role = f" role={x['role']}" if x.get("role") else ""
        print(f"{x['address']:<40} {x['tool']:<8} {x.get('state', '?'):<8}{role}{mark}")
    return EXIT_OK


def _whoami(paths: StatePaths, a: Args) -> int:
    try:
        me = client.call(paths.socket, "whoami", caller_args())
    except DaemonNotRunning:
        from meshd.cli.degraded import whoami_direct

        me = whoami_direct(paths, caller_args())
    if me is None:
        raise UnknownAgent("this shell is not inside a tmux pane meshd can see")
    print(json.dumps(me, indent=2) if a.json else me["address"])
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    t0 = time.monotonic()
    try:
        code = run(sys.argv[1:] if argv is None else argv, dict(os.environ))
    except MeshError as exc:
        print(f"notify-pane: {exc}", file=sys.stderr)
        if isinstance(exc, UsageError) and exc.exit_code == EXIT_USAGE and "missing" in exc.message:
            print(USAGE, end="", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    if os.environ.get("MESHD_TIMING"):
        print(f"notify-pane: {1000 * (time.monotonic() - t0):.1f} ms", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
