"""`aifinops-tray --screenshot DIR` writes the three windows as PNG files."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtGui import QImage
from pytestqt.qtbot import QtBot

from gui.app import main
from tests.conftest import RunningAgent


def test_screenshot_writes_three_pngs(qtbot: QtBot, agent: RunningAgent, tmp_path: Path) -> None:
    out = tmp_path / "shots"
    assert main(["--screenshot", str(out), "--url", agent.base_url]) == 0
    sizes = {}
    for name in ("chat.png", "dashboard.png", "tray-menu.png"):
        image = QImage(str(out / name))
        assert not image.isNull(), name
        sizes[name] = (image.width(), image.height())
    assert sizes["chat.png"] == (720, 640)
    assert sizes["dashboard.png"] == (900, 760)
    width, height = sizes["tray-menu.png"]
    assert width > 50 and height > 100
    assert len(agent.rows()) == 1  # the chat screenshot shows a real streamed answer
