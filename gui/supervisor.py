"""Find the agent, or start one and keep it running.

Order: the URL given on the command line, the discovery file a running agent writes
(`<config dir>/agent.json`), then where the settings say the agent listens
(`agent.discovery.agent_url`: https when it serves TLS). The first that answers `/api/v1/info`
is used. If none does, `python -m agent agent run` is started as a child and restarted when it
dies, at most `max_restarts` times per `window_s`. An agent this tray did not start is never
stopped.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from PySide6.QtCore import QObject, QProcess, QTimer, Signal

from agent.api.http_client import open_http_client
from agent.discovery import agent_url, read_discovery
from agent.errors import ConfigError
from agent.paths import Paths
from agent.settings import load_settings
from gui.client import Reply, run_in_pool

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8765"  # the default settings' URL, when the settings cannot be read


def discovered_url(paths: Paths) -> str | None:
    """The URL in the discovery file, or None (no file, or not one we can read)."""
    entry = read_discovery(paths)
    url = entry["url"] if entry is not None else None
    return url if isinstance(url, str) and url.startswith(("http://", "https://")) else None


def settings_url(home: Path | None) -> str:
    """Where this home's settings say the agent listens (`aifinops agent run` with no options):
    their host and port, https when `agent.tls_certfile` is set."""
    try:
        return agent_url(load_settings(home=home).agent)
    except ConfigError as e:
        log.warning("%s; looking for the agent at %s", e.message, DEFAULT_URL)
        return DEFAULT_URL


def answers(url: str, timeout_s: float = 1.0) -> bool:
    """Whether an aifinops agent answers at `url` (blocking: worker threads only)."""
    try:
        with open_http_client(url.rstrip("/"), timeout_s) as http:
            response = http.get("/api/v1/info")
        return response.status_code == 200 and response.json().get("name") == "aifinops"
    except (httpx.HTTPError, ValueError, AttributeError):
        return False
    except ConfigError as e:  # a trust store that cannot be read: nothing can be reached over https
        log.warning("%s", e.message)
        return False


def agent_command(home: Path | None = None) -> tuple[str, list[str]]:
    """How to start an agent: `python -m agent agent run`, or the bundle's `aifinops` beside us."""
    args = ["--home", str(home)] if home is not None else []
    args += ["agent", "run"]
    if getattr(sys, "frozen", False):  # PyInstaller: sys.executable is aifinops-tray itself
        cli = Path(sys.executable).with_name("aifinops.exe" if sys.platform == "win32" else "aifinops")
        return str(cli), args
    return sys.executable, ["-m", "agent", *args]


@dataclass
class RestartLimit:
    """At most `max_restarts` restarts in any `window_s` seconds."""

    max_restarts: int = 3
    window_s: float = 300.0
    _times: deque[float] = field(default_factory=deque)

    def allow(self, now_s: float) -> bool:
        while self._times and now_s - self._times[0] > self.window_s:
            self._times.popleft()
        if len(self._times) >= self.max_restarts:
            return False
        self._times.append(now_s)
        return True


class Supervisor(QObject):
    """Owns at most one child agent. Signals: `found(url)`, `gave_up(why)`."""

    found = Signal(str)
    gave_up = Signal(str)

    def __init__(
        self,
        paths: Paths,
        configured_url: str | None = None,
        home: Path | None = None,
        limit: RestartLimit | None = None,
        probe: Callable[[str], bool] = answers,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.paths = paths
        self.configured_url = configured_url
        self.home = home
        self.limit = limit or RestartLimit()
        self._probe = probe
        self.settings_url = settings_url(home)  # read again before starting an agent
        self._child: QProcess | None = None
        self._stopping = False
        self._wait_timer = QTimer(self)
        self._wait_timer.setInterval(250)
        self._wait_timer.timeout.connect(self._check_child_ready)
        self._wait_deadline_s = 0.0
        self._probing = False

    @property
    def child_pid(self) -> int | None:
        """The process id of the agent this tray started, while it runs."""
        return self._child.processId() if self.owns_agent and self._child is not None else None

    @property
    def owns_agent(self) -> bool:
        return self._child is not None and self._child.state() != QProcess.ProcessState.NotRunning

    def candidates(self) -> list[str]:
        urls = [self.configured_url, discovered_url(self.paths), self.settings_url]
        return list(dict.fromkeys(u.rstrip("/") for u in urls if u))

    def locate(self) -> str | None:
        """The first candidate that answers (blocking: call from a worker thread)."""
        return next((url for url in self.candidates() if self._probe(url)), None)

    def start_child(self) -> None:
        """Start `python -m agent agent run`, then emit `found` once it answers."""
        if self.owns_agent or self._stopping:
            return
        if not self.limit.allow(time.monotonic()):
            self.gave_up.emit(
                f"the agent stopped {self.limit.max_restarts} times in {self.limit.window_s:.0f} s; "
                f"see the log folder {self.paths.log_dir}"
            )
            return
        self.settings_url = settings_url(self.home)  # the child reads the settings as they are now
        program, args = agent_command(self.home)
        child = QProcess(self)
        child.setProcessChannelMode(QProcess.ProcessChannelMode.ForwardedChannels)
        child.finished.connect(self._child_finished)
        log.info("starting the agent: %s %s", program, " ".join(args))
        child.start(program, args)
        self._child = child
        self._wait_deadline_s = time.monotonic() + 120.0
        self._wait_timer.start()

    def _check_child_ready(self) -> None:
        if self._probing:
            return
        self._probing = True
        reply = run_in_pool(self.locate, Reply(self))
        reply.done.connect(self._child_probed)
        reply.failed.connect(self._child_probed)

    def _child_probed(self, url: object) -> None:
        self._probing = False
        if not self._wait_timer.isActive():
            return
        if isinstance(url, str):
            self._wait_timer.stop()
            self.found.emit(url)
        elif time.monotonic() > self._wait_deadline_s:
            self._wait_timer.stop()
            self.gave_up.emit("the agent did not start within 120 s")

    def _child_finished(self, exit_code: int, _status: QProcess.ExitStatus) -> None:
        self._wait_timer.stop()
        self._child = None
        if self._stopping:
            return
        log.warning("the agent we started exited (status %d); restarting", exit_code)
        self.start_child()

    def stop(self, timeout_ms: int = 10_000) -> None:
        """Stop the agent this tray started (SIGTERM, then kill); leave any other agent alone."""
        self._stopping = True
        self._wait_timer.stop()
        child, self._child = self._child, None
        if child is None or child.state() == QProcess.ProcessState.NotRunning:
            return
        child.finished.disconnect(self._child_finished)
        child.terminate()
        if not child.waitForFinished(timeout_ms):
            child.kill()
            child.waitForFinished(2_000)
