"""``mesh demo``: three toy agents in tmux windows that message each other.

:mod:`meshd.demo.agent` is the agent (a small REPL, stdlib only);
:mod:`meshd.demo.session` builds the tmux session and sends the demo messages.
Both send through the real ``notify-pane`` program, found by
:func:`notify_command`, so the demo exercises the same path agents use.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROLES = ("architect", "builder", "reviewer")
RELAY_PHRASE = "please relay to"


def notify_command() -> list[str]:
    """argv prefix that runs this installation's ``notify-pane``.

    The console script next to this interpreter comes first (it is this meshd,
    where a ``notify-pane`` on PATH might be another install or agent-mesh's
    script), then PATH, then the module through this interpreter.
    """
    sibling = Path(sys.executable).parent / "notify-pane"
    if sibling.is_file():
        return [str(sibling)]
    found = shutil.which("notify-pane")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from meshd.cli.notify import main; "
            "sys.exit(main())"]
