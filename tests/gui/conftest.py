"""GUI tests: offscreen Qt, and any Qt warning fails the test."""

from __future__ import annotations

import os

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before Qt is imported anywhere

from collections.abc import Iterator

import pytest
from PySide6.QtCore import QMessageLogContext, QThreadPool, QtMsgType, qInstallMessageHandler

# Qt's offscreen platform says this about itself; it is not a problem of ours.
IGNORED = (
    "This plugin does not support",
    "QObject::connect: No such signal QPlatformNativeInterface::systemTrayWindowChanged",
)


@pytest.fixture(autouse=True)
def qt_warnings_fail() -> Iterator[None]:
    seen: list[str] = []

    def handler(kind: QtMsgType, _context: QMessageLogContext, message: str) -> None:
        if kind != QtMsgType.QtDebugMsg and not any(message.startswith(i) for i in IGNORED):
            seen.append(f"{kind.name}: {message}")

    previous = qInstallMessageHandler(handler)
    yield
    qInstallMessageHandler(previous)
    assert not seen, f"Qt warnings: {seen}"


@pytest.fixture(autouse=True)
def pool_drained() -> Iterator[None]:
    """No worker call outlives its test (and the widgets it reports to)."""
    yield
    assert QThreadPool.globalInstance().waitForDone(30_000)
