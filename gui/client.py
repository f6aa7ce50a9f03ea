"""The agent's HTTP API, called from worker threads; results come back to the UI thread as signals.

Every call runs in the global QThreadPool (httpx, blocking, in the worker); the UI thread never
waits on the network. A `Reply` QObject lives in the caller's thread and emits `done(result)` or
`failed(AgentError)` there through a queued connection.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import httpx
from PySide6.QtCore import QCoreApplication, QObject, QRunnable, QThreadPool, Signal

from agent.api.http_client import open_http_client
from agent.api.schemas import AIFinOpsInfo, BudgetReport, EventList, Info, ModelList
from agent.api.sse import StreamError, stream_chat
from agent.errors import ConfigError
from gui.errors import AgentError
from gui.figures import Figures, figures_from_dashboard, figures_from_spend

log = logging.getLogger(__name__)

FALLBACK_SPEND_DIMENSIONS = ("model", "route", "feature", "tier")


class Reply(QObject):
    """The outcome of one call, delivered in the thread that created it."""

    done = Signal(object)
    failed = Signal(object)  # AgentError
    finished = Signal()  # after `done` or `failed` (whose queued slots then run first)


class StreamReply(Reply):
    """A streamed chat answer: `delta(text)` as tokens arrive, then `done(AIFinOpsInfo | None)`."""

    delta = Signal(str)


class _Job(QRunnable):
    def __init__(self, work: Callable[[], Any], reply: Reply) -> None:
        super().__init__()
        self._work = work
        self._reply = reply

    def run(self) -> None:
        try:
            result = self._work()
        except AgentError as e:
            _emit(self._reply.failed, e)
        except Exception as e:  # a worker-thread boundary: report, never crash the app
            log.exception("agent call failed")
            _emit(self._reply.failed, AgentError(0, "client_error", str(e)))
        else:
            _emit(self._reply.done, result)
        _emit(self._reply.finished)


def _emit(signal: Any, *args: Any) -> None:
    """Emit from a worker; when the window that asked is gone (the app is closing), its reply
    object is deleted and there is nobody left to tell: drop the result."""
    try:
        signal.emit(*args)
    except RuntimeError:
        log.debug("reply dropped: its receiver was deleted")


def run_in_pool(work: Callable[[], Any], reply: Reply) -> Reply:
    """Run `work` in the global thread pool; `reply` emits its result in its own thread.

    The reply is handed to the application for the duration of the call: the window or tray
    that asked may be deleted meanwhile (Qt then drops its connections), but the object the
    worker emits on must live until the worker is done with it.
    """
    app = QCoreApplication.instance()
    if app is not None:
        reply.setParent(app)
    reply.finished.connect(reply.deleteLater)
    QThreadPool.globalInstance().start(_Job(work, reply))
    return reply


class AgentClient(QObject):
    """One agent at `base_url` with one user's token. `base_url` may change (agent restarted)."""

    def __init__(self, base_url: str, token: str | None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._lock = threading.Lock()
        self._base_url = base_url.rstrip("/")
        self.token = token

    @property
    def base_url(self) -> str:
        with self._lock:
            return self._base_url

    def set_base_url(self, base_url: str) -> None:
        with self._lock:
            self._base_url = base_url.rstrip("/")

    # -- blocking calls, for worker threads only --------------------------------------------
    def _http(self, timeout: float | httpx.Timeout) -> httpx.Client:
        try:
            return open_http_client(self.base_url, timeout)
        except ConfigError as e:  # a trust store that cannot be read: the agent cannot be reached
            raise AgentError.unreachable(e.message) from e

    def request(self, method: str, path: str, *, json_body: Any = None, timeout_s: float = 10.0, **params: str) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            with self._http(timeout_s) as http:
                response = http.request(method, path, params=params or None, json=json_body, headers=headers)
        except httpx.HTTPError as e:
            raise AgentError.unreachable(f"{type(e).__name__}: {e}") from e
        if response.status_code >= 400:
            raise AgentError.from_body(
                response.status_code, _json_or_none(response), response.headers.get("retry-after")
            )
        return response.json() if response.content else None

    def info(self) -> Info:
        return Info.model_validate(self.request("GET", "/api/v1/info", timeout_s=3.0))

    def me(self) -> dict[str, Any]:
        body = self.request("GET", "/api/v1/me")
        return body if isinstance(body, dict) else {}

    def budgets(self) -> BudgetReport:
        return BudgetReport.model_validate(self.request("GET", "/api/v1/budgets"))

    def models(self) -> list[str]:
        """The chat models (embedding models answer /v1/embeddings only)."""
        cards = ModelList.model_validate(self.request("GET", "/v1/models")).data
        return [card.id for card in cards if card.aifinops_kind == "chat"]

    def events(self, since: int, wait_s: int, timeout_s: float) -> EventList:
        body = self.request("GET", "/api/v1/events", since=str(since), wait=str(wait_s), timeout_s=timeout_s)
        return EventList.model_validate(body)

    def figures(self, since: str = "30d") -> Figures:
        """The dashboard's figures, from /api/v1/dashboard, or from spend and budgets on older agents."""
        try:
            return figures_from_dashboard(self.request("GET", "/api/v1/dashboard", since=since))
        except AgentError as e:
            if e.status != 404:
                raise
        spend = {by: self.request("GET", "/api/v1/spend", by=by, since=since) for by in FALLBACK_SPEND_DIMENSIONS}
        return figures_from_spend(spend, self.budgets(), since)

    def set_cloud_paused(self, paused: bool) -> bool:
        body = self.request("POST", "/api/v1/preferences", json_body={"cloud_paused": paused})
        return bool(body.get("cloud_paused", paused)) if isinstance(body, dict) else paused

    def invalidate(self, entry_id: int) -> None:
        self.request("POST", f"/api/v1/cache/{entry_id}/invalidate")

    def stream_chat(self, body: dict[str, Any], reply: StreamReply) -> AIFinOpsInfo | None:
        """POST a streamed chat; emits each text delta; returns the final chunk's x_aifinops."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        timeout = httpx.Timeout(10.0, read=300.0)
        try:
            with self._http(timeout) as http:
                return stream_chat(http, body, lambda text: _emit(reply.delta, text), headers=headers, timeout=timeout)
        except StreamError as e:
            raise AgentError.from_body(e.status, e.body, e.retry_after) from e
        except httpx.HTTPError as e:
            raise AgentError.unreachable(f"{type(e).__name__}: {e}") from e

    # -- asynchronous calls, for the UI thread -----------------------------------------------
    def call(self, work: Callable[[], Any], reply: Reply | None = None) -> Reply:
        """Run `work` in the pool; connect to the returned reply's `done`/`failed`."""
        return run_in_pool(work, reply or Reply(self))

    def chat(self, body: dict[str, Any]) -> StreamReply:
        reply = StreamReply(self)
        self.call(lambda: self.stream_chat(body, reply), reply)
        return reply


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
