"""NVML access (NVIDIA's ``nvidia-ml-py``, module ``pynvml``), initialised lazily under a lock.

A missing library, driver or GPU is not an error for the caller: ``probe()`` reports it, and
machines without NVIDIA GPUs simply run without GPU tracking. Units are in every name.

Samples come through one seam, ``GpuSource``: ``NvmlSource`` reads the real NVML, ``TraceReplay``
replays a recorded trace (``read_trace``/``write_trace``/``record``; the CSV format is described
in docs/GPU_TRACE.md), so everything downstream runs the same on a box without a GPU.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Protocol

log = logging.getLogger(__name__)

_lock = threading.Lock()
_initialised: bool | None = None  # None: not tried yet (or to be tried again)
_init_error: str | None = None
_init_retryable = False  # False: no NVIDIA library on this machine, trying again is pointless

_MIB = 1024 * 1024


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
    global _initialised, _init_error, _init_retryable
    with _lock:
        if _initialised is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                _initialised, _init_error = True, None
            except ImportError as e:
                _initialised, _init_error, _init_retryable = False, f"nvidia-ml-py is not installed ({e})", False
            except Exception as e:  # noqa: BLE001 - pynvml.NVMLError and friends: no GPU here
                _initialised, _init_error = False, f"{type(e).__name__}: {e}"
                # No library at all means no NVIDIA driver is installed; anything else (driver not
                # loaded yet, version mismatch after an upgrade, ...) may go away: worth retrying.
                no_library = getattr(sys.modules.get("pynvml"), "NVML_ERROR_LIBRARY_NOT_FOUND", object())
                _init_retryable = getattr(e, "value", None) != no_library
        return _initialised


def _forget_init(reason: str | None) -> None:
    """Mark NVML as not initialised so that the next ``_ensure_init`` tries again."""
    global _initialised, _init_error
    with _lock:
        if _initialised:
            import pynvml

            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError as e:
                log.debug("nvmlShutdown after losing the driver: %s", e)
        _initialised = None
        if reason is not None:
            _init_error = reason


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
    return value.decode(errors="replace") if isinstance(value, bytes) else value


# -- the real NVML ----------------------------------------------------------------------------


class _DriverLost(Exception):
    """NVML as a whole stopped answering (driver unloaded, upgraded under us, ...)."""


class _GpuGone(Exception):
    """This GPU stopped answering (fell off the bus, was reset, was removed)."""


# NVML return codes (nvml.h; stable across releases) that say the whole library is gone, or one GPU.
_DRIVER_LOST_NAMES = (
    "NVML_ERROR_UNINITIALIZED",
    "NVML_ERROR_DRIVER_NOT_LOADED",
    "NVML_ERROR_LIBRARY_NOT_FOUND",
    "NVML_ERROR_LIB_RM_VERSION_MISMATCH",
)
_GPU_GONE_NAMES = ("NVML_ERROR_GPU_IS_LOST", "NVML_ERROR_NOT_FOUND", "NVML_ERROR_INVALID_ARGUMENT")


class NvmlSource:
    """``GpuSource`` over the real NVML.

    Per GPU: name, utilisation (%), memory used and total (MiB), power draw (W) and the compute and
    graphics processes using it. A metric NVML cannot read is None (processes: ``()``); a GPU that
    stops answering drops out of the list; when the driver goes away ``sample()`` returns ``[]``
    and initialisation is tried again after ``retry_after_s`` (not on every call). Never raises.
    """

    def __init__(self, *, retry_after_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.retry_after_s = retry_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._retry_at: float | None = None  # monotonic seconds; None: no retry pending

    def sample(self) -> list[GpuSample]:
        with self._lock:
            now = self._clock()
            if self._retry_at is not None:
                if now < self._retry_at:
                    return []
                self._retry_at = None
                _forget_init(None)
            if not _ensure_init():
                if _init_retryable:
                    self._retry_at = now + self.retry_after_s
                return []
            try:
                return self._read_all(datetime.now(UTC))
            except _DriverLost as e:
                log.warning("NVML stopped answering (%s); trying again in %.0f s", e, self.retry_after_s)
                _forget_init(f"driver lost: {e}")
                self._retry_at = now + self.retry_after_s
                return []

    def _read_all(self, timestamp: datetime) -> list[GpuSample]:
        import pynvml

        errors = _nvml_errors(pynvml)
        try:
            count = int(pynvml.nvmlDeviceGetCount())
        except errors as e:
            raise _DriverLost(_describe(e)) from e
        samples = []
        for index in range(count):
            try:
                samples.append(self._read_one(pynvml, errors, index, timestamp))
            except _GpuGone as e:
                log.info("GPU %d stopped answering (%s): left out of this sample", index, e)
        return samples

    def _read_one(self, pynvml: Any, errors: tuple[type[BaseException], ...], index: int, ts: datetime) -> GpuSample:
        def read(call: Callable[..., Any], *args: Any) -> Any:
            try:
                return call(*args)
            except errors as e:
                _classify(pynvml, e)
                return None

        handle = read(pynvml.nvmlDeviceGetHandleByIndex, index)
        if handle is None:
            raise _GpuGone("no handle")
        name = read(pynvml.nvmlDeviceGetName, handle)
        util = read(pynvml.nvmlDeviceGetUtilizationRates, handle)
        memory = read(pynvml.nvmlDeviceGetMemoryInfo, handle)
        power_mw = read(pynvml.nvmlDeviceGetPowerUsage, handle)
        processes: dict[int, GpuProcess] = {}
        for getter in (pynvml.nvmlDeviceGetComputeRunningProcesses, pynvml.nvmlDeviceGetGraphicsRunningProcesses):
            for proc in read(getter, handle) or ():
                used_bytes = getattr(proc, "usedGpuMemory", None)  # None: NVML says not available
                known = processes.get(int(proc.pid))
                if known is None or known.used_memory_mib is None:
                    mib = None if used_bytes is None else int(used_bytes) / _MIB
                    processes[int(proc.pid)] = GpuProcess(int(proc.pid), mib)
        return GpuSample(
            timestamp=ts,
            gpu_index=index,
            gpu_name="" if name is None else _text(name),
            util_pct=None if util is None else float(util.gpu),
            mem_used_mib=None if memory is None else int(memory.used) / _MIB,
            mem_total_mib=None if memory is None else int(memory.total) / _MIB,
            power_w=None if power_mw is None else int(power_mw) / 1000,
            processes=tuple(processes.values()),
        )


def _nvml_errors(pynvml: Any) -> tuple[type[BaseException], ...]:
    # NVMLLibraryMismatchError: an unversioned call (the process lists) the installed driver lacks.
    mismatch = getattr(pynvml, "NVMLLibraryMismatchError", None)
    return (pynvml.NVMLError, mismatch) if isinstance(mismatch, type) else (pynvml.NVMLError,)


def _classify(pynvml: Any, error: BaseException) -> None:
    """Raise ``_DriverLost`` or ``_GpuGone`` when the error says so; return for a mere missing metric."""
    code = getattr(error, "value", None)
    if code is None:
        return
    if code in {getattr(pynvml, n, None) for n in _DRIVER_LOST_NAMES}:
        raise _DriverLost(_describe(error)) from error
    if code in {getattr(pynvml, n, None) for n in _GPU_GONE_NAMES}:
        raise _GpuGone(_describe(error)) from error


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


# -- recorded traces --------------------------------------------------------------------------

TRACE_COLUMNS = ("timestamp", "gpu_index", "gpu_name", "util_pct", "mem_used_mib", "mem_total_mib", "power_w")
TRACE_HEADER = ",".join(TRACE_COLUMNS)
MAX_TRACE_BYTES = 200 * 1000 * 1000

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_INDEX = re.compile(r"\d{1,6}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class TraceError(ValueError):
    """A trace file that is not in the format of docs/GPU_TRACE.md.

    ``line`` is 1-based (the header is line 1), None for the file as a whole (too large, missing);
    ``column`` names the offending column when there is one.
    """

    def __init__(self, message: str, *, line: int | None, column: str | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line is not None else message)
        self.message = message
        self.line = line
        self.column = column


def read_trace(path: str | os.PathLike[str], *, max_bytes: int = MAX_TRACE_BYTES) -> list[GpuSample]:
    """Read and validate a whole trace; samples sorted by (timestamp, gpu_index). Raises ``TraceError``."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise TraceError(f"cannot read {os.fspath(path)}: {e.strerror or e}", line=None) from e
    if len(data) > max_bytes:
        raise TraceError(f"file is larger than {max_bytes} bytes", line=None)
    return parse_trace(data)


def parse_trace(data: bytes) -> list[GpuSample]:
    """``read_trace`` on bytes already in memory."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise TraceError(f"not UTF-8 (byte {e.start})", line=line) from e
    rows = csv.reader(io.StringIO(text, newline=""), strict=True)
    samples: list[GpuSample] = []
    last_seen: dict[int, tuple[datetime, int]] = {}  # gpu_index -> (timestamp, line)
    try:
        header = next(rows, None)
        if header is None:
            raise TraceError(f"empty file: expected the header {TRACE_HEADER!r}", line=1)
        if header != list(TRACE_COLUMNS):
            raise TraceError(f"header must be {TRACE_HEADER!r}, not {','.join(header)[:200]!r}", line=1)
        for fields in rows:
            line = rows.line_num
            if not fields:
                continue  # a blank line (e.g. the end of the file)
            sample = _parse_row(fields, line)
            previous = last_seen.get(sample.gpu_index)
            if previous is not None and sample.timestamp <= previous[0]:
                raise TraceError(
                    f"timestamp {fields[0]!r} is not after GPU {sample.gpu_index}'s previous sample"
                    f" (line {previous[1]}): time must go forward for each GPU",
                    line=line,
                    column="timestamp",
                )
            last_seen[sample.gpu_index] = (sample.timestamp, line)
            samples.append(sample)
    except csv.Error as e:
        raise TraceError(f"not valid CSV: {e}", line=rows.line_num or 1) from e
    samples.sort(key=lambda s: (s.timestamp, s.gpu_index))
    return samples


def _parse_row(fields: list[str], line: int) -> GpuSample:
    if len(fields) != len(TRACE_COLUMNS):
        raise TraceError(f"expected {len(TRACE_COLUMNS)} columns, found {len(fields)}", line=line)
    raw = dict(zip(TRACE_COLUMNS, fields, strict=True))
    timestamp = _parse_timestamp(raw["timestamp"], line)
    if not _INDEX.fullmatch(raw["gpu_index"]):
        raise TraceError(
            f"gpu_index {_show(raw['gpu_index'])} is not a whole number >= 0", line=line, column="gpu_index"
        )
    if _CONTROL.search(raw["gpu_name"]):
        raise TraceError(
            f"gpu_name {_show(raw['gpu_name'])} contains a control character", line=line, column="gpu_name"
        )
    util = _parse_number(raw, "util_pct", line)
    if util is not None and not 0 <= util <= 100:
        raise TraceError(f"util_pct {_show(raw['util_pct'])} is outside 0..100", line=line, column="util_pct")
    used = _parse_number(raw, "mem_used_mib", line)
    total = _parse_number(raw, "mem_total_mib", line)
    if used is not None and total is not None and used > total:
        raise TraceError(
            f"mem_used_mib {_show(raw['mem_used_mib'])} is more than mem_total_mib {_show(raw['mem_total_mib'])}",
            line=line,
            column="mem_used_mib",
        )
    return GpuSample(
        timestamp, int(raw["gpu_index"]), raw["gpu_name"], util, used, total, _parse_number(raw, "power_w", line)
    )


def _parse_timestamp(value: str, line: int) -> datetime:
    def refuse(why: str) -> TraceError:
        return TraceError(f"timestamp {_show(value)} {why}", line=line, column="timestamp")

    if "T" not in value:
        raise refuse("is not ISO-8601 with a time (e.g. 2025-01-31T12:00:00Z)")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as e:
        raise refuse("is not ISO-8601 (e.g. 2025-01-31T12:00:00Z)") from e
    if parsed.tzinfo is None:
        raise refuse("has no time zone: write it in UTC with 'Z' or '+00:00'")
    if parsed.utcoffset() != timedelta(0):
        raise refuse("is not in UTC: write it with 'Z' or '+00:00'")
    return parsed.astimezone(UTC)


def _parse_number(raw: dict[str, str], column: str, line: int) -> float | None:
    value = raw[column]
    if value == "":
        return None
    if not _NUMBER.fullmatch(value):
        raise TraceError(f"{column} {_show(value)} is not a number", line=line, column=column)
    number = float(value)
    if not math.isfinite(number):
        raise TraceError(f"{column} {_show(value)} is not a finite number", line=line, column=column)
    if number < 0:
        raise TraceError(f"{column} {_show(value)} is negative", line=line, column=column)
    return number


def _show(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:60] + "...")


def _format_row(sample: GpuSample) -> list[str]:
    return [
        _format_timestamp(sample.timestamp),
        str(sample.gpu_index),
        _CONTROL.sub(" ", sample.gpu_name),  # names are one line of text; NVML's always are
        _format_number(sample.util_pct),
        _format_number(sample.mem_used_mib),
        _format_number(sample.mem_total_mib),
        _format_number(sample.power_w),
    ]


def _format_timestamp(ts: datetime) -> str:
    if ts.tzinfo is None:
        raise ValueError(f"naive timestamp {ts.isoformat()}: samples carry aware UTC timestamps")
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _format_number(value: float | None) -> str:
    if value is None:
        return ""
    if not math.isfinite(value):
        raise ValueError(f"{value} cannot be written to a trace")
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _csv_line(sample: GpuSample) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(_format_row(sample))
    return buffer.getvalue()


def write_trace(samples: Iterable[GpuSample], out_path: str | os.PathLike[str]) -> Path:
    """Write ``samples`` (sorted by timestamp, then GPU) as a trace, atomically. Processes are left out."""
    out = Path(out_path)
    ordered = sorted(samples, key=lambda s: (s.timestamp, s.gpu_index))
    lines = [_csv_line(s) for s in ordered]  # formatting errors surface before anything is written
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(TRACE_HEADER + "\n")
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


class TraceReplay:
    """``GpuSource`` over recorded samples: each ``sample()`` returns every GPU of the next
    timestamp, then ``[]`` once the trace is exhausted. ``samples`` holds them all, in order."""

    def __init__(self, samples: Iterable[GpuSample]) -> None:
        ordered = sorted(samples, key=lambda s: (s.timestamp, s.gpu_index))
        seen: set[tuple[datetime, int]] = set()
        for s in ordered:
            if s.timestamp.tzinfo is None:
                raise ValueError(f"naive timestamp {s.timestamp.isoformat()} for GPU {s.gpu_index}")
            if (s.timestamp, s.gpu_index) in seen:
                raise ValueError(f"GPU {s.gpu_index} has two samples at {s.timestamp.isoformat()}")
            seen.add((s.timestamp, s.gpu_index))
        self.samples: tuple[GpuSample, ...] = tuple(ordered)
        self._groups = _group_by_timestamp(self.samples)
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> TraceReplay:
        return cls(read_trace(path))

    def sample(self) -> list[GpuSample]:
        with self._lock:
            return list(next(self._groups, ()))


def _group_by_timestamp(samples: tuple[GpuSample, ...]) -> Iterator[tuple[GpuSample, ...]]:
    start = 0
    for end in range(1, len(samples) + 1):
        if end == len(samples) or samples[end].timestamp != samples[start].timestamp:
            yield samples[start:end]
            start = end


def record(
    source: GpuSource,
    out_path: str | os.PathLike[str],
    interval_s: float = 1.0,
    duration_s: float | None = None,
    stop_event: threading.Event | None = None,
    *,
    on_sample: Callable[[list[GpuSample]], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Sample ``source`` every ``interval_s`` and append the rows to the trace at ``out_path``.

    Samples at 0, interval_s, 2 * interval_s, ... while that is under ``duration_s`` (None: no
    end), and stops as soon as ``stop_event`` is set. Each row is flushed as it is written, so a
    killed recorder leaves a valid trace. An existing trace is appended to (its header must match;
    a partial last row left by a kill is cut off). A tick at which the source has no GPU writes
    nothing. Ticks missed because sampling was slow are skipped, not caught up. Returns the number
    of rows written.
    """
    if interval_s <= 0:
        raise ValueError("interval_s must be > 0")
    stop = stop_event or threading.Event()
    written = 0
    with _open_for_append(Path(out_path)) as f:
        start = clock()
        tick = 0  # samples are taken at start + tick * interval_s
        while not stop.is_set() and (duration_s is None or tick * interval_s < duration_s):
            samples = source.sample()
            for s in sorted(samples, key=lambda s: s.gpu_index):
                f.write(_csv_line(s))
                f.flush()
                written += 1
            if on_sample is not None:
                on_sample(samples)
            # The next tick not yet past (never the same one twice, even if a wait ended early).
            tick = max(tick + 1, math.floor((clock() - start) / interval_s) + 1)
            if duration_s is not None and tick * interval_s >= duration_s:
                break
            wait_s = start + tick * interval_s - clock()
            if wait_s > 0:
                stop.wait(wait_s)
    return written


def _open_for_append(path: Path) -> IO[str]:
    if not path.exists() or path.stat().st_size == 0:
        f = path.open("w", encoding="utf-8", newline="")
        f.write(TRACE_HEADER + "\n")
        f.flush()
        return f
    with path.open("rb") as existing:
        first = existing.readline().decode("utf-8-sig", errors="replace").rstrip("\r\n")
    if first != TRACE_HEADER:
        raise TraceError(f"{path} is not a GPU trace (header {first[:200]!r}); not appending to it", line=1)
    with path.open("rb+") as existing:
        size = existing.seek(0, os.SEEK_END)
        tail_start = max(0, size - 65536)
        existing.seek(tail_start)
        tail = existing.read()
        if not tail.endswith(b"\n"):
            if b"\n" not in tail:
                raise TraceError(f"{path} ends with a row longer than 64 KiB; not appending to it", line=None)
            log.warning("%s ends with a partial row (a killed recorder?): cutting it off", path)
            existing.truncate(tail_start + tail.rfind(b"\n") + 1)
    return path.open("a", encoding="utf-8", newline="")
