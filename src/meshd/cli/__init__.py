"""Command-line entry points: ``mesh`` (click), ``notify-pane`` (stdlib only), ``meshd``."""
