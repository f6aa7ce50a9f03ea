"""Secrets a policy names by reference, resolved on the box: the environment and files (the OS
keyring is exercised end to end in tests/integration/test_alert_channels_live.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.alerts.secrets import SecretMissing, resolve


def test_an_env_reference_reads_the_variable_and_says_when_it_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIFINOPS_TEST_HOOK", "https://hooks.example.com/T/B/X")
    assert resolve("env:AIFINOPS_TEST_HOOK") == "https://hooks.example.com/T/B/X"
    monkeypatch.setenv("AIFINOPS_TEST_HOOK", "")
    with pytest.raises(SecretMissing, match="the environment variable AIFINOPS_TEST_HOOK is not set on this box"):
        resolve("env:AIFINOPS_TEST_HOOK")


def test_a_file_reference_reads_the_file_stripped_and_says_why_not(tmp_path: Path) -> None:
    secret = tmp_path / "slack-webhook.txt"
    secret.write_text("https://hooks.example.com/T/B/X\r\n")
    assert resolve(f"file:{secret}") == "https://hooks.example.com/T/B/X"
    with pytest.raises(SecretMissing, match="cannot be read on this box") as missing:
        resolve(f"file:{tmp_path / 'absent.txt'}")
    assert "FileNotFoundError" in str(missing.value)
    secret.write_text("  \n")
    with pytest.raises(SecretMissing, match="is empty"):
        resolve(f"file:{secret}")
    with pytest.raises(SecretMissing, match="not a secret source"):
        resolve("vault:x")
