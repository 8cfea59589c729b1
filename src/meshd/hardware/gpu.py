"""GPU memory through NVML (nvidia-ml-py), its one home in meshd.

No driver, no library or no GPU all mean "no GPUs": a host without a GPU
has a GPU budget of 0 and never fails because of it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    total_bytes: int
    used_bytes: int
    processes: tuple[tuple[int, int], ...]  # (pid, bytes used)


def probe() -> list[Gpu]:
    """Every GPU NVML can see, with per-process memory; [] when NVML is unavailable."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.debug("NVML unavailable: %s", exc)
        return []
    try:
        return [_one(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount())]
    except pynvml.NVMLError as exc:
        log.warning("NVML query failed: %s", exc)
        return []
    finally:
        pynvml.nvmlShutdown()


def _one(nv: object, i: int) -> Gpu:
    h = nv.nvmlDeviceGetHandleByIndex(i)  # type: ignore[attr-defined]
    mem = nv.nvmlDeviceGetMemoryInfo(h)  # type: ignore[attr-defined]
    name = nv.nvmlDeviceGetName(h)  # type: ignore[attr-defined]
    procs: list[tuple[int, int]] = []
    for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        try:
            procs += [(p.pid, int(p.usedGpuMemory or 0)) for p in getattr(nv, getter)(h)]
        except nv.NVMLError:  # type: ignore[attr-defined]
            continue
    return Gpu(i, name.decode() if isinstance(name, bytes) else str(name), int(mem.total),
               int(mem.used), tuple(procs))
