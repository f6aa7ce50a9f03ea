"""A small client for the agent's own API, used by the CLI (``spend``, ``chat``, ``doctor``).

Imported by every command that talks to the agent, so it stays light: httpx, not the openai SDK
(half a second to import) nor the ledger; the wire schemas (50 pydantic models) are imported once
an answer is there to parse, so an error reaches the terminal without building them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from agent.errors import AgentApiError, AgentUnreachable, AuthError

if TYPE_CHECKING:
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
    from agent.settings import Settings


def agent_base_url(settings: Settings) -> str:
    host = settings.agent.host
    host = "127.0.0.1" if host in {"0.0.0.0", ""} else host  # noqa: S104 - a bind-all address
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.agent.port}"


def _read_token_file(path: Path) -> str | None:
    """`agent.identity.read_token_file`, without importing the ledger (sqlite_utils, numpy) it pulls in."""
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except (FileNotFoundError, UnicodeDecodeError):
        return None


class AgentClient:
    def __init__(self, base_url: str, token: str | None, timeout_s: float = 10.0) -> None:
        self.base_url = base_url
        self.token = token
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s)

    @classmethod
    def from_settings(cls, settings: Settings, token: str | None = None) -> AgentClient:
        token = token or os.environ.get("AIFINOPS_TOKEN") or _read_token_file(settings.paths.token_file)
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

    def openai(self) -> openai.OpenAI:
        import openai

        if not self.token:
            raise AuthError("no token: set AIFINOPS_TOKEN, pass --token, or run the agent once")
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=self.token, max_retries=0)

    def close(self) -> None:
        self._http.close()
