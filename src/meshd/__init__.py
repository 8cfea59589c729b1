"""meshd: a serverless mesh for AI coding agents that live in tmux panes.

The package is layered (see docs/architecture.md):

* pure core -- ``registry.address``, ``registry.fold``, ``registry.detect``,
  ``delivery.sanitize``, ``delivery.classify``, ``locks.modes``, ``journal.event``:
  no I/O, no clocks, no third-party imports;
* adapters -- ``tmux`` (tmux server), ``journal.store`` (SQLite), ``hardware``
  (psutil, NVML), ``transport`` (Unix socket, later SSH), ``files`` (atomic TOML);
* services and entry points -- ``daemon`` and ``cli``.
"""

__version__ = "0.1.0"
