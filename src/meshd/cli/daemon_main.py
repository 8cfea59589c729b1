"""``meshd``: the daemon's entry point (``meshd run``)."""

from __future__ import annotations

import logging
import sys

import click

from meshd import __version__
from meshd.errors import EXIT_CONFIG, AlreadyRunning, ConfigError, MeshError
from meshd.paths import StatePaths


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("meshd")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


@click.group()
@click.version_option(__version__, prog_name="meshd")
def main() -> None:
    """meshd: the per-host daemon of the agent mesh."""


@main.command()
def run() -> None:
    """Run the daemon in the foreground (systemd runs this)."""
    from meshd import config
    from meshd.daemon.app import run_daemon

    paths = StatePaths.from_env()
    try:
        cfg = config.load(paths)
    except ConfigError as exc:
        click.echo(f"meshd: bad configuration: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    setup_logging(cfg.daemon.log_level)
    try:
        run_daemon(paths, cfg)
    except AlreadyRunning as exc:
        click.echo(f"meshd: {exc}", err=True)
        sys.exit(exc.exit_code)
    except MeshError as exc:
        logging.getLogger("meshd").error("meshd failed: %s", exc)
        sys.exit(exc.exit_code)


@main.command()
def link() -> None:
    """Bridge stdin/stdout to this host's meshd (run by a peer over SSH)."""
    from meshd.transport.bridge import run_link

    try:
        sys.exit(run_link(StatePaths.from_env().socket))
    except MeshError as exc:
        click.echo(f"meshd: {exc}", err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
