"""A small client for the agent's own API, used by the CLI (``spend``, ``chat``, ``doctor``).

The agent's URL is `agent.discovery.agent_url`'s (https when the agent serves TLS); a streamed
chat is read by `agent.api.sse`, as the tray reads it.

Imported by every command that talks to the agent, so it stays light: httpx, not the openai SDK
(half a second to import) nor the ledger; the wire schemas (50 pydantic models) are imported once
an answer is there to parse, so an error reaches the terminal without building them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from agent.api.http_client import open_http_client
from agent.api.sse import StreamError, stream_chat
from agent.discovery import local_agent_url
from agent.errors import AgentApiError, AgentUnreachable, AuthError
from agent.identity import read_token_file

if TYPE_CHECKING:
    from agent.api.schemas import (
        AIFinOpsInfo,
        BudgetReport,
        CacheCleared,
        CacheStats,
        EventList,
        EventOut,
        Info,
        Me,
        SpendReport,
        ThrottleList,
    )
    from agent.settings import Settings


class AgentClient:
    def __init__(self, base_url: str, token: str | None, timeout_s: float = 10.0) -> None:
        self.base_url = base_url
        self.token = token
        self._http = open_http_client(base_url, timeout_s)

    @classmethod
    def from_settings(cls, settings: Settings, token: str | None = None) -> AgentClient:
        token = token or os.environ.get("AIFINOPS_TOKEN") or read_token_file(settings.paths.token_file)
        return cls(local_agent_url(settings), token)

    def _auth(self) -> dict[str, str]:
        if not self.token:
            raise AuthError("no token: set AIFINOPS_TOKEN, pass --token, or run the agent once")
        return {"Authorization": f"Bearer {self.token}"}

    def _unreachable(self, e: httpx.TransportError) -> AgentUnreachable:
        return AgentUnreachable(
            f"no agent answers at {self.base_url} ({type(e).__name__}): start it with `aifinops agent run`"
        )

    def _get(self, path: str, params: dict[str, str] | None = None, auth: bool = True) -> Any:
        return self._call("GET", path, params, auth)

    def _call(self, method: str, path: str, params: dict[str, str] | None = None, auth: bool = True) -> Any:
        headers = self._auth() if auth else {}
        try:
            response = self._http.request(method, path, params=params, headers=headers)
        except httpx.TransportError as e:
            raise self._unreachable(e) from e
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                raise AgentApiError(response.status_code, error["type"], error["message"])
            except (ValueError, KeyError, TypeError):
                raise AgentApiError(response.status_code, "http_error", response.text[:200]) from None
        if response.status_code == 204:
            return None
        return response.json()

    def info(self) -> Info | None:
        try:
            body = self._get("/api/v1/info", auth=False)
        except (AgentUnreachable, AgentApiError):
            return None
        from agent.api.schemas import Info

        return Info.model_validate(body)

    def me(self) -> Me:
        body = self._get("/api/v1/me")
        from agent.api.schemas import Me

        return Me.model_validate(body)

    def spend(self, by: str, since: str) -> SpendReport:
        body = self._get("/api/v1/spend", {"by": by, "since": since})
        from agent.api.schemas import SpendReport

        return SpendReport.model_validate(body)

    def budgets(self, everything: bool) -> BudgetReport:
        body = self._get("/api/v1/budgets", {"all": "true"} if everything else None)
        from agent.api.schemas import BudgetReport

        return BudgetReport.model_validate(body)

    def cache_stats(self, everything: bool) -> CacheStats:
        body = self._get("/api/v1/cache", {"all": "true"} if everything else None)
        from agent.api.schemas import CacheStats

        return CacheStats.model_validate(body)

    def events(self, since: int = 0) -> EventList:
        body = self._call("GET", "/api/v1/events", {"since": str(since)})
        from agent.api.schemas import EventList

        return EventList.model_validate(body)

    def alerts_test(self) -> EventOut:
        body = self._call("POST", "/api/v1/alerts/test")
        from agent.api.schemas import EventOut

        return EventOut.model_validate(body)

    def throttles(self) -> ThrottleList:
        body = self._call("GET", "/api/v1/anomalies")
        from agent.api.schemas import ThrottleList

        return ThrottleList.model_validate(body)

    def clear_throttle(self, user: str) -> None:
        self._call("DELETE", f"/api/v1/anomalies/{quote(user, safe='')}")

    def cache_clear(self, everything: bool) -> CacheCleared:
        body = self._call("DELETE", "/api/v1/cache", {"all": "true"} if everything else None)
        from agent.api.schemas import CacheCleared

        return CacheCleared.model_validate(body)

    def chat(self, body: dict[str, Any], on_text: Callable[[str], None], feature: str) -> AIFinOpsInfo | None:
        """Stream a chat completion: each text delta to `on_text`; its x_aifinops (cost, route)."""
        headers = self._auth() | {"X-AIFinOps-Feature": feature}
        try:
            return stream_chat(self._http, body, on_text, headers=headers, timeout=httpx.Timeout(10.0, read=300.0))
        except httpx.TransportError as e:
            raise self._unreachable(e) from e
        except StreamError as e:
            raise AgentApiError(e.status, e.type, e.message) from e

    def close(self) -> None:
        self._http.close()
