"""`aifinops gpu record`: as a user runs it here (no GPU), over a scripted NVML, and on a real GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli import main
from native.nvml import TRACE_HEADER, probe, read_trace
from tests.unit.test_nvml_source import Gpu, use_scripted

HAS_GPU = probe().available


def aifinops(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(HAS_GPU, reason="checks the behaviour without a GPU")
def test_without_a_gpu_it_says_so_in_one_line_and_exits_1(tmp_path: Path) -> None:
    out = tmp_path / "trace.csv"
    result = aifinops("gpu", "record", "--out", str(out), "--duration", "1")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: no NVIDIA GPU: NVMLError_LibraryNotFound: NVML Shared Library Not Found"
    ]
    assert not out.exists()


def test_record_explains_itself() -> None:
    result = aifinops("gpu", "record", "--help")
    assert result.returncode == 0
    assert "Usage: aifinops gpu record" in result.stdout and "--interval" in result.stdout


def test_record_over_a_scripted_nvml_writes_a_valid_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_scripted(monkeypatch, [Gpu(), Gpu(name="NVIDIA A100-SXM4-80GB", util_pct=100)])
    out = tmp_path / "trace.csv"
    result = CliRunner().invoke(main, ["gpu", "record", "--out", str(out), "--interval", "0.1", "--duration", "0.35"])
    assert result.exit_code == 0, result.output
    assert "recording #0 NVIDIA L4, #1 NVIDIA A100-SXM4-80GB every 0.1 s for 0.35 s" in result.output
    samples = read_trace(out)
    assert len(samples) == 8  # ticks at 0, 0.1, 0.2, 0.3 s; two GPUs each
    assert [s.gpu_index for s in samples] == [0, 1] * 4
    assert {(s.util_pct, s.power_w) for s in samples} == {(40.0, 72.5), (100.0, 72.5)}
    assert "wrote 8 rows" in result.output


def test_record_refuses_to_append_to_a_file_that_is_not_a_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_scripted(monkeypatch, [Gpu()])
    out = tmp_path / "notes.csv"
    out.write_text("my notes\n")
    result = CliRunner().invoke(main, ["gpu", "record", "--out", str(out), "--duration", "1"])
    assert result.exit_code == 1
    assert "not a GPU trace" in result.output
    assert out.read_text() == "my notes\n"


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU and driver")
def test_record_on_a_real_gpu(tmp_path: Path) -> None:
    out = tmp_path / "trace.csv"
    result = aifinops("gpu", "record", "--out", str(out), "--interval", "0.5", "--duration", "2")
    assert result.returncode == 0, result.stderr
    assert out.read_text().splitlines()[0] == TRACE_HEADER
    samples = read_trace(out)
    gpus = len(probe().gpus)
    # ticks at 0, 0.5, 1 and 1.5 s; one may be skipped if a sample was slow
    assert len(samples) % gpus == 0 and 3 * gpus <= len(samples) <= 4 * gpus
    assert all(s.mem_total_mib for s in samples)
