"""GPU traces: the CSV format of docs/GPU_TRACE.md, its validation, replay and recording."""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from native.nvml import (
    TRACE_HEADER,
    GpuProcess,
    GpuSample,
    TraceError,
    TraceReplay,
    parse_trace,
    read_trace,
    record,
    write_trace,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gpu"
T0 = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def trace(*rows: str) -> bytes:
    return (TRACE_HEADER + "\n" + "".join(r + "\n" for r in rows)).encode()


def refused(data: bytes) -> TraceError:
    with pytest.raises(TraceError) as caught:
        parse_trace(data)
    return caught.value


# -- the hand-made fixtures -------------------------------------------------------------------


def test_idle_hour_is_360_idle_samples_ten_seconds_apart() -> None:
    samples = read_trace(FIXTURES / "idle_1h.csv")
    assert len(samples) == 360
    assert {(s.gpu_index, s.gpu_name, s.util_pct, s.mem_used_mib, s.mem_total_mib, s.power_w) for s in samples} == {
        (0, "NVIDIA GeForce RTX 4090", 0.0, 512.0, 24564.0, 21.5)
    }
    assert samples[0].timestamp == T0 and samples[-1].timestamp == at(3590)
    assert {b.timestamp - a.timestamp for a, b in itertools.pairwise(samples)} == {timedelta(seconds=10)}
    assert all(s.processes == () for s in samples)


def test_busy_hour_is_all_busy() -> None:
    samples = read_trace(FIXTURES / "busy_1h.csv")
    assert len(samples) == 360
    assert {(s.util_pct, s.power_w) for s in samples} == {(100.0, 412.25)}


def test_two_gpus_come_back_together_per_timestamp() -> None:
    replay = TraceReplay(read_trace(FIXTURES / "two_gpus_10min.csv"))
    first, second = replay.sample(), replay.sample()
    assert [(s.gpu_index, s.util_pct, s.timestamp) for s in first] == [(0, 25.0, T0), (1, 0.0, T0)]
    assert [(s.gpu_index, s.util_pct, s.timestamp) for s in second] == [(0, 75.0, at(10)), (1, 0.0, at(10))]
    assert len(replay.samples) == 120


def test_a_gap_in_time_is_kept_as_it_is() -> None:
    samples = read_trace(FIXTURES / "gap_10min.csv")
    gaps = [b.timestamp - a.timestamp for a, b in itertools.pairwise(samples)]
    assert sorted(set(gaps)) == [timedelta(seconds=10), timedelta(seconds=610)]
    assert samples[29].timestamp == at(290) and samples[30].timestamp == at(900)


def test_a_gpu_that_disappears_drops_out_of_the_replay() -> None:
    replay = TraceReplay.from_file(FIXTURES / "gpu_disappears.csv")
    steps = []
    while batch := replay.sample():
        steps.append(sorted(s.gpu_index for s in batch))
    assert steps == [[0, 1]] * 30 + [[0]] * 30
    assert replay.sample() == []


@pytest.mark.parametrize(
    ("name", "line", "column", "words"),
    [
        ("bad_header.csv", 1, None, "header must be"),
        ("garbage_line.csv", 4, None, "expected 7 columns, found 1"),
        ("util_140.csv", 3, "util_pct", "util_pct '140' is outside 0..100"),
        ("backwards_time.csv", 5, "timestamp", "not after GPU 0's previous sample (line 4)"),
    ],
)
def test_invalid_fixtures_name_the_line(name: str, line: int, column: str | None, words: str) -> None:
    with pytest.raises(TraceError) as caught:
        read_trace(FIXTURES / name)
    assert caught.value.line == line
    assert caught.value.column == column
    assert words in str(caught.value)
    assert str(caught.value).startswith(f"line {line}: ")


# -- validation, case by case -----------------------------------------------------------------

GOOD = "2025-01-06T09:00:00Z,0,NVIDIA L4,10,100,23034,30"


@pytest.mark.parametrize(
    ("row", "column", "words"),
    [
        ("2025-01-06T09:00:00Z,0,L4,-1,100,200,30", "util_pct", "util_pct '-1' is negative"),
        ("2025-01-06T09:00:00Z,0,L4,100.5,100,200,30", "util_pct", "outside 0..100"),
        ("2025-01-06T09:00:00Z,0,L4,ten,100,200,30", "util_pct", "util_pct 'ten' is not a number"),
        ("2025-01-06T09:00:00Z,0,L4,nan,100,200,30", "util_pct", "'nan' is not a number"),
        ("2025-01-06T09:00:00Z,0,L4,10,inf,200,30", "mem_used_mib", "'inf' is not a number"),
        ("2025-01-06T09:00:00Z,0,L4,10,100,1e999,30", "mem_total_mib", "'1e999' is not a finite number"),
        ("2025-01-06T09:00:00Z,0,L4,10,300,200,30", "mem_used_mib", "mem_used_mib '300' is more than mem_total_mib"),
        ("2025-01-06T09:00:00Z,0,L4,10,100,200,-5", "power_w", "power_w '-5' is negative"),
        ("2025-01-06T09:00:00Z,0,L4,10,100,200, 30", "power_w", "' 30' is not a number"),
        ("2025-01-06T09:00:00Z,0,L4,10,1_000,2000,30", "mem_used_mib", "'1_000' is not a number"),
        ("2025-01-06T09:00:00Z,-1,L4,10,100,200,30", "gpu_index", "gpu_index '-1' is not a whole number"),
        ("2025-01-06T09:00:00Z,,L4,10,100,200,30", "gpu_index", "gpu_index '' is not a whole number"),
        ("2025-01-06T09:00:00Z,1.0,L4,10,100,200,30", "gpu_index", "not a whole number"),
        ("2025-01-06T09:00:00,0,L4,10,100,200,30", "timestamp", "has no time zone"),
        ("2025-01-06T10:00:00+01:00,0,L4,10,100,200,30", "timestamp", "is not in UTC"),
        ("2025-01-06,0,L4,10,100,200,30", "timestamp", "is not ISO-8601 with a time"),
        ("yesterday,0,L4,10,100,200,30", "timestamp", "is not ISO-8601"),
        (",0,L4,10,100,200,30", "timestamp", "is not ISO-8601"),
        ("2025-01-06T09:00:00Z,0,L4,10,100,200", None, "expected 7 columns, found 6"),
        ("2025-01-06T09:00:00Z,0,L4,10,100,200,30,1", None, "expected 7 columns, found 8"),
    ],
)
def test_each_bad_value_is_refused_naming_line_column_and_value(row: str, column: str | None, words: str) -> None:
    error = refused(trace(GOOD, row))
    assert (error.line, error.column) == (3, column)
    assert words in str(error)


def test_the_header_must_be_exact() -> None:
    assert refused(b"").line == 1
    assert "empty file" in str(refused(b""))
    assert refused(TRACE_HEADER.upper().encode() + b"\n").line == 1
    assert refused((TRACE_HEADER + ",extra\n").encode()).line == 1
    assert refused((TRACE_HEADER.replace(",", ";") + "\n").encode()).line == 1


def test_not_utf8_names_the_line() -> None:
    error = refused(trace(GOOD) + b"2025-01-06T09:00:10Z,0,\xff\xfe,10,100,23034,30\n")
    assert error.line == 3 and "not UTF-8" in str(error)


def test_nul_bytes_and_broken_quotes_are_trace_errors() -> None:
    error = refused(trace(GOOD, "2025-01-06T09:00:10Z,0,a\0b,10,100,200,30"))
    assert (error.line, error.column) == (3, "gpu_name") and "control character" in str(error)
    error = refused(trace(GOOD, '2025-01-06T09:00:10Z,0,"two\nlines",10,100,200,30'))
    assert (error.line, error.column) == (4, "gpu_name")
    assert refused(trace(GOOD, '2025-01-06T09:00:10Z,0,"L4"x,10,100,200,30')).line == 3


def test_the_same_gpu_twice_at_one_moment_is_refused() -> None:
    error = refused(trace(GOOD, GOOD))
    assert error.line == 3 and error.column == "timestamp"


def test_a_file_over_the_cap_is_refused_before_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_bytes(trace(GOOD))
    assert read_trace(path, max_bytes=1000)
    with pytest.raises(TraceError) as caught:
        read_trace(path, max_bytes=50)
    assert caught.value.line is None and "larger than 50 bytes" in str(caught.value)


def test_a_missing_file_is_a_trace_error(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="cannot read"):
        read_trace(tmp_path / "nope.csv")


def test_what_is_accepted() -> None:
    samples = parse_trace(
        "\ufeff".encode()
        + trace(
            "2025-01-06T09:00:00+00:00,0,x,0,1.5,1.5,.5",
            '2025-01-06T09:00:00.250Z,0,"Tesla, the ""big"" one",99.5,0,0,1e2',
            "",  # blank lines are skipped
            "2025-01-06T09:00:00Z,1,,,,,",  # unknown name and metrics; time goes forward per GPU only
        ).replace(b"\n", b"\r\n")
    )
    assert [(s.timestamp, s.gpu_index) for s in samples] == [(T0, 0), (T0, 1), (at(0.25), 0)]
    assert samples[1] == GpuSample(T0, 1, "", None, None, None, None)
    assert samples[2].gpu_name == 'Tesla, the "big" one' and samples[2].power_w == 100.0
    assert samples[0].power_w == 0.5
    assert all(s.timestamp.tzinfo is UTC for s in samples)


def test_header_only_is_an_empty_trace() -> None:
    assert parse_trace(trace()) == []
    assert TraceReplay([]).sample() == []


# -- writing and replaying --------------------------------------------------------------------


def test_round_trip_leaves_processes_out(tmp_path: Path) -> None:
    samples = [
        GpuSample(at(0), 0, "NVIDIA H100", 12.5, 1024.25, 81559.0, 123.456, (GpuProcess(42, 1000.0),)),
        GpuSample(at(0), 1, "", None, None, None, None),
        GpuSample(at(1.5), 0, "NVIDIA H100", 0.0, 3e-05, 81559.0, 70.0),
    ]
    path = write_trace(reversed(samples), tmp_path / "t.csv")
    text = path.read_text()
    assert text.splitlines()[:3] == [
        TRACE_HEADER,
        "2025-01-06T09:00:00Z,0,NVIDIA H100,12.5,1024.25,81559,123.456",
        "2025-01-06T09:00:00Z,1,,,,,",
    ]
    assert read_trace(path) == [
        GpuSample(s.timestamp, s.gpu_index, s.gpu_name, s.util_pct, s.mem_used_mib, s.mem_total_mib, s.power_w)
        for s in samples
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]  # no temp file left behind


def test_write_refuses_what_read_would_refuse_and_leaves_the_old_file(tmp_path: Path) -> None:
    path = write_trace([GpuSample(at(0), 0, "x", 1.0, 1.0, 2.0, 3.0)], tmp_path / "t.csv")
    before = path.read_bytes()
    with pytest.raises(ValueError, match="cannot be written"):
        write_trace([GpuSample(at(0), 0, "x", float("nan"), 1.0, 2.0, 3.0)], path)
    with pytest.raises(ValueError, match="naive"):
        write_trace([GpuSample(datetime(2025, 1, 1), 0, "x", 1.0, 1.0, 2.0, 3.0)], path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]


def test_replay_steps_through_timestamps_then_returns_empty() -> None:
    replay = TraceReplay(
        [
            GpuSample(at(20), 0, "a", 3.0, None, None, None),
            GpuSample(at(0), 1, "b", 2.0, None, None, None),
            GpuSample(at(0), 0, "a", 1.0, None, None, None),
        ]
    )
    assert [s.util_pct for s in replay.samples] == [1.0, 2.0, 3.0]
    assert [s.util_pct for s in replay.sample()] == [1.0, 2.0]
    assert [s.util_pct for s in replay.sample()] == [3.0]
    assert replay.sample() == [] and replay.sample() == []


def test_replay_refuses_samples_no_source_could_give() -> None:
    with pytest.raises(ValueError, match="two samples"):
        TraceReplay([GpuSample(at(0), 0, "a", 1.0, None, None, None)] * 2)
    with pytest.raises(ValueError, match="naive"):
        TraceReplay([GpuSample(datetime(2025, 1, 1), 0, "a", 1.0, None, None, None)])


finite = st.one_of(st.none(), st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False))


@st.composite
def gpu_samples(draw: st.DrawFn) -> list[GpuSample]:
    result = []
    for index in range(draw(st.integers(0, 3))):
        offsets = draw(st.lists(st.integers(0, 10**9), unique=True, max_size=5))
        for offset in offsets:
            used, total = draw(finite), draw(finite)
            if used is not None and total is not None and used > total:
                used, total = total, used
            util = draw(st.one_of(st.none(), st.floats(0, 100)))
            name = draw(st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=20))
            ts = T0 + timedelta(microseconds=offset)
            result.append(GpuSample(ts, index, name, util, used, total, draw(finite)))
    return result


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(samples=gpu_samples())
def test_round_trip_property(samples: list[GpuSample], tmp_path: Path) -> None:
    path = write_trace(samples, tmp_path / "p.csv")
    assert read_trace(path) == sorted(samples, key=lambda s: (s.timestamp, s.gpu_index))


@settings(max_examples=300)
@given(data=st.binary(max_size=400))
def test_random_bytes_only_ever_raise_trace_error(data: bytes) -> None:
    try:
        parse_trace(data)
    except TraceError as e:
        assert e.line is None or e.line >= 1


row_fields = st.lists(
    st.one_of(
        st.text(max_size=12),
        st.sampled_from(["", "0", "-1", "100", "101", "nan", "1e999", "2025-01-06T09:00:00Z", "2025-01-06T09:00:00"]),
    ),
    min_size=0,
    max_size=9,
)


@settings(max_examples=300)
@given(rows=st.lists(row_fields, max_size=6))
def test_random_rows_only_ever_raise_trace_error(rows: list[list[str]]) -> None:
    data = (TRACE_HEADER + "\n" + "".join(",".join(r) + "\n" for r in rows)).encode("utf-8", "surrogatepass")
    try:
        samples = parse_trace(data)
    except TraceError as e:
        assert e.line is not None and 1 <= e.line <= data.count(b"\n") + 1
    else:
        assert all(s.util_pct is None or 0 <= s.util_pct <= 100 for s in samples)


# -- recording --------------------------------------------------------------------------------


class FakeClock:
    """Monotonic time that only moves when the recorder waits."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ClockedEvent(threading.Event):
    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.waits.append(round(timeout, 9))
        self.clock.now += timeout
        return self.is_set()


def test_record_samples_at_the_interval_for_the_duration(tmp_path: Path) -> None:
    clock = FakeClock()
    stop = ClockedEvent(clock)
    source = TraceReplay(read_trace(FIXTURES / "two_gpus_10min.csv"))
    out = tmp_path / "rec.csv"
    written = record(source, out, interval_s=2, duration_s=7, stop_event=stop, clock=clock)
    assert written == 8  # ticks at 0, 2, 4, 6: two GPUs each
    assert stop.waits == [2, 2, 2]  # no idle wait after the last tick
    assert read_trace(out) == list(read_trace(FIXTURES / "two_gpus_10min.csv")[:8])


def test_record_skips_ticks_it_missed_and_stops_on_the_event(tmp_path: Path) -> None:
    clock = FakeClock()
    stop = ClockedEvent(clock)
    calls = []

    class SlowSource:
        def sample(self) -> list[GpuSample]:
            calls.append(clock.now)
            clock.now += 2.5 if len(calls) == 1 else 0.0  # the first sample takes 2.5 intervals
            if len(calls) == 3:
                stop.set()
            return [GpuSample(T0 + timedelta(seconds=len(calls)), 0, "g", 1.0, None, None, None)]

    assert record(SlowSource(), tmp_path / "r.csv", interval_s=1, stop_event=stop, clock=clock) == 3
    assert calls == [0.0, 3.0, 4.0]


def test_record_appends_to_a_trace_cut_off_by_a_kill(tmp_path: Path) -> None:
    out = tmp_path / "rec.csv"
    out.write_bytes(trace(GOOD) + b"2025-01-06T09:00:10Z,0,NVIDIA L")  # killed mid-row
    replay = TraceReplay([GpuSample(at(20), 0, "NVIDIA L4", 5.0, 1.0, 2.0, 3.0)])
    stop = threading.Event()
    assert record(replay, out, interval_s=0.01, duration_s=0.05, stop_event=stop) == 1
    assert [s.timestamp for s in read_trace(out)] == [T0, at(20)]


def test_record_with_no_gpu_writes_only_the_header(tmp_path: Path) -> None:
    out = tmp_path / "rec.csv"
    assert record(TraceReplay([]), out, interval_s=0.01, duration_s=0.03) == 0
    assert out.read_text() == TRACE_HEADER + "\n"


def test_record_refuses_to_append_to_something_else(tmp_path: Path) -> None:
    out = tmp_path / "notes.csv"
    out.write_text("a,b\n1,2\n")
    with pytest.raises(TraceError, match="not a GPU trace"):
        record(TraceReplay([]), out, duration_s=0)
    assert out.read_text() == "a,b\n1,2\n"
    with pytest.raises(ValueError, match="interval_s"):
        record(TraceReplay([]), tmp_path / "x.csv", interval_s=0)
