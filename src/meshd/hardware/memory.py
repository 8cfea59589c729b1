"""Host RAM and CPU as psutil reports them."""

from __future__ import annotations

from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Host:
    cpus: int
    ram_total_bytes: int
    ram_available_bytes: int
    load1: float


def probe() -> Host:
    vm = psutil.virtual_memory()
    return Host(psutil.cpu_count() or 1, int(vm.total), int(vm.available), psutil.getloadavg()[0])
