"""NvmlSource: no GPU here; a real GPU where there is one; a scripted pynvml for the error paths.

The contract suite runs against every GpuSource: the trace replay always, the real NVML only
where a GPU exists, and NvmlSource over the scripted pynvml (a stand-in for hardware absent here).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pynvml as real_pynvml
import pytest

import native.nvml as nvml
from native.nvml import GpuProcess, GpuSource, NvmlSource, TraceReplay, probe, read_trace

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gpu"
HAS_GPU = probe().available
needs_gpu = [pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU and driver")]
MIB = 1024 * 1024


# -- a scripted pynvml ------------------------------------------------------------------------


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value


class NVMLLibraryMismatchError(Exception):
    pass


@dataclass
class Proc:
    pid: int
    usedGpuMemory: int | None  # pynvml's name


@dataclass
class Gpu:
    name: str = "NVIDIA L4"
    util_pct: int = 40
    used_bytes: int = 1024 * MIB
    total_bytes: int = 23034 * MIB
    power_mw: int = 72_500
    compute: list[Proc] = field(default_factory=list)
    graphics: list[Proc] = field(default_factory=list)


@dataclass
class Handle:
    index: int


class ScriptedNvml:
    """Enough of pynvml's API (same names, same return shapes) to drive NvmlSource; any call can be
    made to fail with an NVML return code through ``fail[(function name, gpu index or None)]``."""

    def __init__(self, gpus: list[Gpu]) -> None:
        self.gpus = gpus
        self.fail: dict[tuple[str, int | None], int | type[Exception]] = {}
        self.calls: list[str] = []

    def _call(self, name: str, index: int | None = None) -> None:
        self.calls.append(name)
        failure = self.fail.get((name, index))
        if isinstance(failure, int):
            raise NVMLError(failure)
        if failure is not None:
            raise failure("scripted")

    def nvmlInit(self) -> None:
        self._call("nvmlInit")

    def nvmlShutdown(self) -> None:
        self._call("nvmlShutdown")

    def nvmlSystemGetDriverVersion(self) -> str:
        self._call("nvmlSystemGetDriverVersion")
        return "999.99"

    def nvmlDeviceGetCount(self) -> int:
        self._call("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Handle:
        self._call("nvmlDeviceGetHandleByIndex", index)
        if index >= len(self.gpus):
            raise NVMLError(real_pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return Handle(index)

    def nvmlDeviceGetName(self, handle: Handle) -> str:
        self._call("nvmlDeviceGetName", handle.index)
        return self.gpus[handle.index].name

    def nvmlDeviceGetUtilizationRates(self, handle: Handle) -> Any:
        self._call("nvmlDeviceGetUtilizationRates", handle.index)
        return types.SimpleNamespace(gpu=self.gpus[handle.index].util_pct, memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: Handle) -> Any:
        self._call("nvmlDeviceGetMemoryInfo", handle.index)
        gpu = self.gpus[handle.index]
        return types.SimpleNamespace(total=gpu.total_bytes, used=gpu.used_bytes, free=gpu.total_bytes - gpu.used_bytes)

    def nvmlDeviceGetPowerUsage(self, handle: Handle) -> int:
        self._call("nvmlDeviceGetPowerUsage", handle.index)
        return self.gpus[handle.index].power_mw

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Handle) -> list[Proc]:
        self._call("nvmlDeviceGetComputeRunningProcesses", handle.index)
        return list(self.gpus[handle.index].compute)

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: Handle) -> list[Proc]:
        self._call("nvmlDeviceGetGraphicsRunningProcesses", handle.index)
        return list(self.gpus[handle.index].graphics)

    def module(self) -> types.ModuleType:
        module = types.ModuleType("pynvml")
        for name in dir(self):
            if name.startswith("nvml"):
                setattr(module, name, getattr(self, name))
        for name in dir(real_pynvml):
            if name.startswith("NVML_ERROR_"):
                setattr(module, name, getattr(real_pynvml, name))
        module.NVMLError = NVMLError  # type: ignore[attr-defined]
        module.NVMLLibraryMismatchError = NVMLLibraryMismatchError  # type: ignore[attr-defined]
        return module


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedNvml]:
    """A two-GPU box behind the real module's names; nvml's init state is put back afterwards."""
    yield use_scripted(monkeypatch, [Gpu(), Gpu(name="NVIDIA A100-SXM4-80GB", util_pct=100, total_bytes=81920 * MIB)])


def use_scripted(monkeypatch: pytest.MonkeyPatch, gpus: list[Gpu]) -> ScriptedNvml:
    """Put a scripted pynvml in place, with nvml's init state reset (and all of it restored after)."""
    fake = ScriptedNvml(gpus)
    monkeypatch.setitem(sys.modules, "pynvml", fake.module())
    monkeypatch.setattr(nvml, "_initialised", None)
    monkeypatch.setattr(nvml, "_init_error", None)
    monkeypatch.setattr(nvml, "_init_retryable", False)
    return fake


def test_the_scripted_pynvml_uses_the_real_api_names() -> None:
    fake = ScriptedNvml([]).module()
    names = [n for n in dir(fake) if n.startswith(("nvml", "NVML"))]
    assert len(names) > 10
    assert [n for n in names if not hasattr(real_pynvml, n)] == []
    assert {f[0] for f in real_pynvml.c_nvmlMemory_t._fields_} >= {"total", "used"}  # type: ignore[attr-defined]
    assert "gpu" in {f[0] for f in real_pynvml.c_nvmlUtilization_t._fields_}  # type: ignore[attr-defined]


# -- this machine (no GPU) --------------------------------------------------------------------


@pytest.mark.skipif(HAS_GPU, reason="checks the behaviour without a GPU")
def test_without_a_gpu_nvml_source_gives_nothing_and_probe_says_why() -> None:
    status = probe()
    assert not status.available and status.gpus == ()
    assert status.error
    source = NvmlSource()
    assert source.sample() == [] and source.sample() == []


# -- the contract, for every GpuSource --------------------------------------------------------


def replay_source() -> GpuSource:
    return TraceReplay(read_trace(FIXTURES / "gpu_disappears.csv"))


def scripted_source() -> GpuSource:
    return NvmlSource()  # over the `scripted` fixture's pynvml, which the test requests


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(replay_source, id="trace-replay"),
        pytest.param(scripted_source, id="nvml-scripted"),
        pytest.param(NvmlSource, id="nvml-real", marks=needs_gpu),
    ],
)
def test_gpu_source_contract(make: Callable[[], GpuSource], request: pytest.FixtureRequest) -> None:
    if make is scripted_source:
        request.getfixturevalue("scripted")
    source = make()
    seen_any = False
    for _ in range(70):  # the replay runs out after 60: [] is part of the contract too
        samples = source.sample()
        assert isinstance(samples, list)
        seen_any = seen_any or bool(samples)
        indices = [s.gpu_index for s in samples]
        assert len(indices) == len(set(indices)), "GPU indices are unique within one call"
        assert len({s.timestamp for s in samples}) <= 1, "one call is one moment"
        for s in samples:
            assert s.timestamp.tzinfo is not None and s.timestamp.utcoffset() == timedelta(0)
            assert s.gpu_index >= 0 and isinstance(s.gpu_name, str)
            assert s.util_pct is None or 0 <= s.util_pct <= 100
            if s.mem_used_mib is not None and s.mem_total_mib is not None:
                assert 0 <= s.mem_used_mib <= s.mem_total_mib
            assert s.power_w is None or s.power_w >= 0
            assert all(isinstance(p, GpuProcess) and p.pid > 0 for p in s.processes)
    assert seen_any


# -- NvmlSource over the scripted pynvml ------------------------------------------------------


def test_reads_every_metric_in_the_units_of_its_name(scripted: ScriptedNvml) -> None:
    scripted.gpus[0].compute = [Proc(4242, 512 * MIB), Proc(77, None)]
    scripted.gpus[0].graphics = [Proc(4242, 512 * MIB), Proc(900, 3 * MIB // 2)]
    first, second = NvmlSource().sample()
    assert first.timestamp == second.timestamp and first.timestamp.tzinfo is UTC
    assert (first.gpu_index, first.gpu_name, first.util_pct) == (0, "NVIDIA L4", 40.0)
    assert (first.mem_used_mib, first.mem_total_mib, first.power_w) == (1024.0, 23034.0, 72.5)
    assert first.processes == (GpuProcess(4242, 512.0), GpuProcess(77, None), GpuProcess(900, 1.5))
    assert (second.gpu_index, second.gpu_name, second.mem_total_mib, second.processes) == (
        1,
        "NVIDIA A100-SXM4-80GB",
        81920.0,
        (),
    )
    assert scripted.calls.count("nvmlInit") == 1
    NvmlSource().sample()
    assert scripted.calls.count("nvmlInit") == 1  # initialised once, lazily, for every source


def test_a_metric_that_fails_becomes_none(scripted: ScriptedNvml) -> None:
    scripted.fail[("nvmlDeviceGetPowerUsage", 0)] = real_pynvml.NVML_ERROR_NOT_SUPPORTED
    scripted.fail[("nvmlDeviceGetUtilizationRates", 0)] = real_pynvml.NVML_ERROR_NO_PERMISSION
    scripted.fail[("nvmlDeviceGetMemoryInfo", 0)] = real_pynvml.NVML_ERROR_UNKNOWN
    scripted.fail[("nvmlDeviceGetName", 0)] = real_pynvml.NVML_ERROR_TIMEOUT
    scripted.fail[("nvmlDeviceGetComputeRunningProcesses", 0)] = NVMLLibraryMismatchError
    scripted.gpus[0].graphics = [Proc(5, 2 * MIB)]
    first, second = NvmlSource().sample()
    assert (first.gpu_name, first.util_pct, first.mem_used_mib, first.mem_total_mib, first.power_w) == (
        "",
        None,
        None,
        None,
        None,
    )
    assert first.processes == (GpuProcess(5, 2.0),)  # the graphics list still came through
    assert second.util_pct == 100.0 and second.power_w == 72.5


def test_a_gpu_that_disappears_drops_out(scripted: ScriptedNvml) -> None:
    source = NvmlSource()
    assert [s.gpu_index for s in source.sample()] == [0, 1]
    scripted.fail[("nvmlDeviceGetHandleByIndex", 0)] = real_pynvml.NVML_ERROR_GPU_IS_LOST
    assert [s.gpu_index for s in source.sample()] == [1]
    del scripted.fail[("nvmlDeviceGetHandleByIndex", 0)]
    scripted.fail[("nvmlDeviceGetPowerUsage", 1)] = real_pynvml.NVML_ERROR_GPU_IS_LOST  # lost mid-read
    assert [s.gpu_index for s in source.sample()] == [0]
    del scripted.fail[("nvmlDeviceGetPowerUsage", 1)]
    scripted.gpus.pop()  # the count shrinks
    assert [s.gpu_index for s in source.sample()] == [0]


def test_a_lost_driver_gives_nothing_then_retries_after_the_back_off(scripted: ScriptedNvml) -> None:
    clock = Clock()
    source = NvmlSource(retry_after_s=30, clock=clock)
    assert len(source.sample()) == 2
    scripted.fail[("nvmlDeviceGetCount", None)] = real_pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    assert source.sample() == []
    assert scripted.calls.count("nvmlShutdown") == 1
    calls = len(scripted.calls)
    clock.now += 29
    assert source.sample() == []
    assert len(scripted.calls) == calls, "no NVML call at all during the back-off"
    del scripted.fail[("nvmlDeviceGetCount", None)]
    clock.now += 1
    assert len(source.sample()) == 2
    assert scripted.calls.count("nvmlInit") == 2


def test_a_driver_lost_in_the_middle_of_a_gpu_counts_as_lost(scripted: ScriptedNvml) -> None:
    clock = Clock()
    source = NvmlSource(retry_after_s=30, clock=clock)
    scripted.fail[("nvmlDeviceGetMemoryInfo", 1)] = real_pynvml.NVML_ERROR_UNINITIALIZED
    assert source.sample() == []
    del scripted.fail[("nvmlDeviceGetMemoryInfo", 1)]
    assert source.sample() == []  # still backing off
    clock.now += 30
    assert len(source.sample()) == 2


def test_an_init_that_may_succeed_later_is_retried_with_back_off(scripted: ScriptedNvml) -> None:
    clock = Clock()
    scripted.fail[("nvmlInit", None)] = real_pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    source = NvmlSource(retry_after_s=30, clock=clock)
    assert source.sample() == [] and source.sample() == []
    assert scripted.calls.count("nvmlInit") == 1
    assert "NVMLError" in (probe().error or "")
    del scripted.fail[("nvmlInit", None)]
    clock.now += 30
    assert len(source.sample()) == 2
    assert probe().available and [g.name for g in probe().gpus] == ["NVIDIA L4", "NVIDIA A100-SXM4-80GB"]


def test_no_nvidia_library_is_never_retried(scripted: ScriptedNvml) -> None:
    clock = Clock()
    scripted.fail[("nvmlInit", None)] = real_pynvml.NVML_ERROR_LIBRARY_NOT_FOUND
    source = NvmlSource(retry_after_s=30, clock=clock)
    for _ in range(3):
        assert source.sample() == []
        clock.now += 3600
    assert scripted.calls.count("nvmlInit") == 1
