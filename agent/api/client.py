"""A small client for the agent's own API, used by the CLI (``spend``, ``chat``, ``doctor``)."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

import httpx
import openai

from agent.api.schemas import (
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
from agent.errors import AgentApiError, AgentUnreachable, AuthError
from agent.identity import read_token_file
from agent.settings import Settings


def agent_base_url(settings: Settings) -> str:
    host = settings.agent.host
    host = "127.0.0.1" if host in {"0.0.0.0", ""} else host  # noqa: S104 - a bind-all address
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.agent.port}"


class AgentClient:
    def __init__(self, base_url: str, token: str | None, timeout_s: float = 10.0) -> None:
        self.base_url = base_url
        self.token = token
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s)

    @classmethod
    def from_settings(cls, settings: Settings, token: str | None = None) -> AgentClient:
        token = token or os.environ.get("AIFINOPS_TOKEN") or read_token_file(settings.paths.token_file)
        return cls(agent_base_url(settings), token)

    def _get(self, path: str, params: dict[str, str] | None = None, auth: bool = True) -> Any:
        return self._call("GET", path, params, auth)

    def _call(self, method: str, path: str, params: dict[str, str] | None = None, auth: bool = True) -> Any:
        headers = {}
        if auth:
            if not self.token:
                raise AuthError("no token: set AIFINOPS_TOKEN, pass --token, or run the agent once")
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            response = self._http.request(method, path, params=params, headers=headers)
        except httpx.TransportError as e:
            raise AgentUnreachable(
                f"no agent answers at {self.base_url} ({type(e).__name__}): start it with `aifinops agent run`"
            ) from e
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
            return Info.model_validate(self._get("/api/v1/info", auth=False))
        except (AgentUnreachable, AgentApiError):
            return None

    def me(self) -> Me:
        return Me.model_validate(self._get("/api/v1/me"))

    def spend(self, by: str, since: str) -> SpendReport:
        return SpendReport.model_validate(self._get("/api/v1/spend", {"by": by, "since": since}))

    def budgets(self, everything: bool) -> BudgetReport:
        return BudgetReport.model_validate(self._get("/api/v1/budgets", {"all": "true"} if everything else None))

    def cache_stats(self, everything: bool) -> CacheStats:
        return CacheStats.model_validate(self._get("/api/v1/cache", {"all": "true"} if everything else None))

    def events(self, since: int = 0) -> EventList:
        return EventList.model_validate(self._call("GET", "/api/v1/events", {"since": str(since)}))

    def alerts_test(self) -> EventOut:
        return EventOut.model_validate(self._call("POST", "/api/v1/alerts/test"))

    def throttles(self) -> ThrottleList:
        return ThrottleList.model_validate(self._call("GET", "/api/v1/anomalies"))

    def clear_throttle(self, user: str) -> None:
        self._call("DELETE", f"/api/v1/anomalies/{quote(user, safe='')}")

    def cache_clear(self, everything: bool) -> CacheCleared:
        params = {"all": "true"} if everything else None
        return CacheCleared.model_validate(self._call("DELETE", "/api/v1/cache", params))

    def openai(self) -> openai.OpenAI:
        if not self.token:
            raise AuthError("no token: set AIFINOPS_TOKEN, pass --token, or run the agent once")
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=self.token, max_retries=0)

    def close(self) -> None:
        self._http.close()
