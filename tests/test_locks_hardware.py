"""Lock-mode compatibility matrix and the hardware probes."""

from __future__ import annotations

import itertools

from meshd.hardware import gpu, memory
from meshd.locks.modes import Mode, compatible, may_upgrade

R, W, IN, C = Mode.READ, Mode.WRITE, Mode.INTENT, Mode.CO_WRITE
TABLE = {  # held -> wanted -> compatible (docs/locks.md)
    R: {R: True, W: False, IN: True, C: False},
    W: {R: False, W: False, IN: False, C: False},
    IN: {R: True, W: False, IN: False, C: False},
    C: {R: False, W: False, IN: False, C: True},
}


def test_matrix_matches_the_documented_table_and_is_symmetric() -> None:
    for held, wanted in itertools.product(Mode, Mode):
        assert compatible(held, wanted) == TABLE[held][wanted], (held, wanted)
        assert compatible(held, wanted) == compatible(wanted, held)


def test_upgrades() -> None:
    assert may_upgrade(IN, W) and may_upgrade(W, W)
    assert not may_upgrade(W, IN) and not may_upgrade(C, W)


def test_host_probe_reports_real_memory() -> None:
    h = memory.probe()
    assert h.cpus >= 1 and 0 < h.ram_available_bytes <= h.ram_total_bytes


def test_gpu_probe_without_gpu_is_empty_not_an_error() -> None:
    gpus = gpu.probe()
    assert isinstance(gpus, list)
    for g in gpus:  # on a GPU machine: sane numbers
        assert 0 <= g.used_bytes <= g.total_bytes and g.name
