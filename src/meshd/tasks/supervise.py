"""When a spawned agent CLI exits: restart it (after how long) or give up.  Pure.

A run that ends with status 0 was quit on purpose: no restart.  Any other end is a
crash: restart it.  A crash within ``fast_s`` of the start is a *fast failure*: the wait
before the restart doubles with each one in a row, from ``backoff_s`` up to
``max_backoff_s``, and ``give_up_after`` of them in a row end the supervision (the CLI
cannot start: a bad flag, no credentials).  A crash after a longer run restarts after
``backoff_s`` and resets the count.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Policy:
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    fast_s: float = 10.0
    give_up_after: int = 5


@dataclass(frozen=True)
class Decision:
    restart: bool
    delay_s: float
    fast_failures: int
    reason: str


def after_exit(policy: Policy, status: int, ran_s: float, fast_failures: int) -> Decision:
    """``fast_failures``: fast failures in a row before this exit."""
    if status == 0:
        return Decision(False, 0.0, 0, "exited normally")
    fast = fast_failures + 1 if ran_s < policy.fast_s else 0
    if fast >= policy.give_up_after:
        return Decision(False, 0.0, fast,
                        f"{fast} fast failures in a row (each under {policy.fast_s:g} s)")
    delay = min(policy.backoff_s * 2 ** max(fast - 1, 0), policy.max_backoff_s)
    return Decision(True, delay, fast, f"exit status {status} after {ran_s:.1f} s")
