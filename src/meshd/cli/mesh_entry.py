"""``mesh`` entry point: tmux hooks take a fast path that never imports click.

tmux runs ``mesh hook on|off SESSION`` on every window and pane change; its start-up
time is part of how fast a new window shows up on every host.  Everything else goes to
the click CLI in :mod:`meshd.cli.mesh_main`.
"""

from __future__ import annotations

import sys


def main() -> int:
    argv = sys.argv[1:]
    if len(argv) in (2, 3) and argv[0] == "hook" and argv[1] in ("on", "off"):
        import contextlib

        from meshd.errors import MeshError
        from meshd.paths import StatePaths
        from meshd.transport import client

        with contextlib.suppress(MeshError):  # a stopped daemon is not tmux's problem: stay quiet
            client.call(StatePaths.from_env().socket, "hook",
                        {"action": argv[1], "session": argv[2] if len(argv) == 3 else ""}, 2.0)
        return 0
    from meshd.cli.mesh_main import main as click_main

    click_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
