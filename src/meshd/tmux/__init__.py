"""The tmux adapter: runs tmux commands, scans panes, pastes.  Owns libtmux too.

Everything that talks to a tmux server lives here.  Commands run as a child
``tmux`` process under a deadline; the daemon calls them from worker threads
so a stuck server never freezes the event loop.  Message text only ever
travels on tmux's stdin (``load-buffer -``), never in its argv.
"""
