"""A trust store that cannot be read is one clear line from the CLI, not a traceback (the tray's
side: tests/gui/test_https_agent.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.api.http_client import open_http_client
from agent.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_a_missing_cert_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    monkeypatch.setenv("SSL_CERT_FILE", str(missing))
    with pytest.raises(ConfigError, match=r"SSL_CERT_FILE=.*no-such-ca\.pem.*No such file"):
        open_http_client("https://127.0.0.1:1", 1.0)


def test_a_cert_file_without_certificates_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    monkeypatch.setenv("SSL_CERT_FILE", str(junk))
    with pytest.raises(ConfigError, match=r"junk\.pem"):
        open_http_client("https://127.0.0.1:1", 1.0)


def test_the_cli_prints_one_line_and_exits_1(tmp_path: Path) -> None:
    env = {**os.environ, "SSL_CERT_FILE": str(tmp_path / "gone.pem"), "AIFINOPS_TOKEN": "t"}
    done = subprocess.run([sys.executable, "-m", "agent", "--home", str(tmp_path / "home"), "spend"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: cannot read the certificates of SSL_CERT_FILE='{tmp_path / 'gone.pem'}': No such file or directory "
        "(point it at a readable PEM bundle, or unset it)"
    ]
