"""Deadlocks across three lock homes over real SSH (RELIABILITY L8, CI-sized).

Three lab hosts (tests/lab.py: namespaces, real sshd, real meshd) each decide the paths
they hold.  Holders are ``--as`` names whose CLIs run on the host of the lock they ask for
(the request is forwarded to the home when it is another host's path).  No one home sees a
cycle that runs through several: only the mesh-wide pass (daemon/lock_graph.py) can.

Checked: a cycle of length 2-5 across the three homes costs exactly one victim, refused
within 1 s + 2 x T_ae of the closing request; random acyclic wait patterns cost none; a
cycle whose edge is released just before it closes costs none.  Needs root.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Iterator

import pytest
from conftest import until
from lab import Host, Lab

FAST = {"MESHD_LINKS_REMOTE_COMMAND": "meshd link", "MESHD_LINKS_ANTI_ENTROPY_S": "1",
        "MESHD_LINKS_BACKOFF_MAX_S": "1", "MESHD_LINKS_CONNECT_TIMEOUT_S": "3",
        "MESHD_DISCOVERY_DEBOUNCE_MS": "5"}
T_AE_S = 1.0
BOUND_S = 1.0 + 2 * T_AE_S


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    from lab import need_lab

    need_lab()
    with Lab(3, env=FAST) as lab:
        for h in lab:
            h.start_meshd()
        for h in lab:
            until(lambda h=h: up(h) == 2, 30, f"{h.name} linked to both")
        yield lab


def up(h: Host) -> int:
    import json

    r = h.mesh("peers", "--json")
    return sum(p["up"] for p in json.loads(r.stdout)) if r.returncode == 0 else 0


def path(lab: Lab, home: Host, name: str) -> str:
    return f"{home.name}:{lab.dir}/{name}"


def take(h: Host, target: str, holder: str) -> None:
    r = h.mesh("lock", "acquire", target, "--as", holder, "--ttl", "120")
    assert r.returncode == 0, r.stderr


def drop(h: Host, target: str, holder: str) -> None:
    h.mesh("lock", "release", target, "--as", holder)


def wait_for(h: Host, target: str, holder: str) -> subprocess.Popen[str]:
    return h.popen([h.lab.python, "-m", "meshd.cli.mesh_entry", "lock", "acquire", target,
                    "--as", holder, "--wait", "60", "--ttl", "120"],
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def queued(h: Host, holder: str) -> bool:
    import json

    r = h.mesh("lock", "list", "--json")
    return r.returncode == 0 and any(w["holder"] == holder for w in json.loads(r.stdout)["waiters"])


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_l8_cycle_across_three_homes_costs_exactly_one_victim(lab: Lab, n: int) -> None:
    hosts = [lab["a"], lab["b"], lab["c"]]
    names = [f"n{n}h{i}" for i in range(n)]
    homes = [hosts[i % 3] for i in range(n)]
    targets = [path(lab, homes[i], f"l8-{n}-{i}") for i in range(n)]
    for i in range(n):
        take(homes[i], targets[i], names[i])
    procs: dict[str, subprocess.Popen[str]] = {}
    for i in range(n - 1):          # H_i waits for H_{i+1}'s path, from H_i's own host
        procs[names[i]] = wait_for(homes[i], targets[i + 1], names[i])
        until(lambda i=i: queued(homes[i + 1], names[i]), 15, f"{names[i]} queued")
    t0 = time.monotonic()
    procs[names[-1]] = wait_for(homes[-1], targets[0], names[-1])    # closes the ring
    try:
        until(lambda: any(p.poll() is not None for p in procs.values()), 15, "a victim")
        detected_s = time.monotonic() - t0
        time.sleep(BOUND_S)              # a second victim would have been refused by now
        ended = {h: p for h, p in procs.items() if p.poll() is not None}
        assert len(ended) == 1, {h: p.communicate() for h, p in ended.items()}
        (victim, proc), = ended.items()
        err = proc.communicate()[1]
        assert proc.returncode == 3 and "deadlock" in err, err
        assert all(name in err for name in names), err                  # the cycle is named
        # detected_s includes starting the closing CLI (~0.3-1 s on a busy machine).
        assert detected_s <= BOUND_S + 1.5, f"victim refused after {detected_s:.2f} s"
        # Everyone lets go of the first locks: every other waiter is granted, none refused.
        for i in range(n):
            drop(homes[i], targets[i], names[i])
        for name, p in procs.items():
            if name != victim:
                _, err = p.communicate(timeout=30)
                assert p.returncode == 0, (name, err)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        for i in range(n):             # the survivors' grants
            for h in hosts:
                drop(h, targets[(i + 1) % n], names[i])


def test_l8_random_acyclic_waits_across_homes_cost_no_victim(lab: Lab) -> None:
    hosts = [lab["a"], lab["b"], lab["c"]]
    rnd = random.Random(8)
    for trial in range(3):
        names = [f"r{trial}h{i}" for i in range(6)]
        rnd.shuffle(names)              # holders wait only on holders later in this order
        homes = {nm: rnd.choice(hosts) for nm in names}
        targets = {nm: path(lab, homes[nm], f"l8r-{nm}") for nm in names}
        for nm in names:
            take(homes[nm], targets[nm], nm)
        procs, wants = {}, {}
        for i, nm in enumerate(names[:-1]):
            other = names[rnd.randrange(i + 1, len(names))]
            wants[nm] = other
            procs[nm] = wait_for(homes[other], targets[other], nm)
        time.sleep(BOUND_S + 1)
        early = {nm: p.communicate() for nm, p in procs.items() if p.poll() is not None}
        assert not early, f"trial {trial}: refused without a cycle: {early}"
        for nm in names:                # everyone lets go of the first locks
            drop(homes[nm], targets[nm], nm)
        pending = dict(procs)
        deadline = time.monotonic() + 60
        while pending:                  # each grant is released at once, for the next in line
            assert time.monotonic() < deadline, f"trial {trial}: still waiting: {sorted(pending)}"
            for nm, p in list(pending.items()):
                if p.poll() is None:
                    continue
                _, err = p.communicate()
                assert p.returncode == 0, (trial, nm, err)
                drop(homes[wants[nm]], targets[wants[nm]], nm)
                del pending[nm]
            time.sleep(0.1)


def test_l8_edge_released_just_before_the_cycle_closes_costs_no_victim(lab: Lab) -> None:
    """X waits for Y's path on b.  Y lets it go and at once asks for X's path on a: the
    wait-for graph a knows of may still show X -> Y for a moment, but there is no cycle,
    and nobody may be refused."""
    a, b = lab["a"], lab["b"]
    for trial in range(3):
        x, y = f"px{trial}", f"py{trial}"
        pa, pb = path(lab, a, f"ph-a-{trial}"), path(lab, b, f"ph-b-{trial}")
        take(a, pa, x)
        take(b, pb, y)
        wx = wait_for(a, pb, x)
        until(lambda y=y, x=x: queued(b, x), 15, "x queued")
        drop(b, pb, y)                   # x is granted pb: its edge x -> y is gone
        wy = wait_for(b, pa, y)          # y now waits for x: y -> x, no cycle
        _, err = wx.communicate(timeout=30)
        assert wx.returncode == 0, err
        time.sleep(BOUND_S)
        assert wy.poll() is None, f"trial {trial}: y refused for a phantom cycle: {wy.communicate()}"
        drop(a, pa, x)
        _, err = wy.communicate(timeout=30)
        assert wy.returncode == 0, err
        drop(a, pb, x)
        drop(b, pa, y)
