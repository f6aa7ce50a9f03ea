"""NVML access (NVIDIA's ``nvidia-ml-py``, module ``pynvml``), initialised lazily under a lock.

A missing library, driver or GPU is not an error for the caller: ``probe()`` reports it, and
machines without NVIDIA GPUs simply run without GPU tracking. Units are in every name.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

_lock = threading.Lock()
_initialised: bool | None = None  # None: not tried yet
_init_error: str | None = None


@dataclass(frozen=True)
class GpuProcess:
    """A process using a GPU, as NVML reports it."""

    pid: int
    used_memory_mib: float | None


@dataclass(frozen=True)
class GpuSample:
    """What one GPU was doing at one moment. Any metric NVML could not read is None."""

    timestamp: datetime  # aware, UTC
    gpu_index: int
    gpu_name: str  # "" when unknown (traces may leave it empty)
    util_pct: float | None
    mem_used_mib: float | None
    mem_total_mib: float | None
    power_w: float | None
    processes: tuple[GpuProcess, ...] = ()


class GpuSource(Protocol):
    """Where samples come from: the real NVML, or a recorded trace replayed."""

    def sample(self) -> list[GpuSample]:
        """One sample per GPU present now; [] when there is none. Never raises."""
        ...


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    memory_total_bytes: int | None


@dataclass(frozen=True)
class NvmlStatus:
    available: bool
    driver_version: str | None
    gpus: tuple[GpuInfo, ...]
    error: str | None


def _ensure_init() -> bool:
    global _initialised, _init_error
    with _lock:
        if _initialised is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                _initialised = True
            except ImportError as e:
                _initialised, _init_error = False, f"nvidia-ml-py is not installed ({e})"
            except Exception as e:  # noqa: BLE001 - pynvml.NVMLError and friends: no GPU here
                _initialised, _init_error = False, f"{type(e).__name__}: {e}"
        return _initialised


def probe() -> NvmlStatus:
    """What NVML can see, or why it cannot."""
    if not _ensure_init():
        return NvmlStatus(False, None, (), _init_error)
    import pynvml

    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            try:
                memory_total_bytes: int | None = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
            except pynvml.NVMLError:
                memory_total_bytes = None
            gpus.append(GpuInfo(index, _text(pynvml.nvmlDeviceGetName(handle)), memory_total_bytes))
    except pynvml.NVMLError as e:
        return NvmlStatus(False, None, (), f"{type(e).__name__}: {e}")
    return NvmlStatus(True, driver, tuple(gpus), None)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
