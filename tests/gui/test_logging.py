"""The tray's log file: keys and tokens are masked there as they are in the agent's."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.paths import Paths
from gui.app import setup_logging


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, given back as it was: the handlers the test added removed and closed."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)


def test_the_tray_log_masks_keys_and_tokens(hermetic_home: Path, root_logger: logging.Logger) -> None:
    paths = Paths.resolve(hermetic_home)
    setup_logging(paths)
    log = logging.getLogger("gui.client")
    log.warning("retrying with Authorization: Bearer %s", "afo_tokenSECRET123")
    log.error("the provider said 401 for key sk-proj-keySECRET456")
    for handler in root_logger.handlers:
        handler.flush()
    text = (paths.log_dir / "tray.log").read_text(encoding="utf-8")
    assert "gui.client: retrying with Authorization: Bearer ***" in text
    assert "gui.client: the provider said 401 for key sk-***" in text
    assert "SECRET" not in text
