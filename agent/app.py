"""The HTTP application: the routes over the services, middleware and error handlers.

Nothing here runs at import; ``build_asgi_app()`` wires an opened ``Services`` to Starlette,
whose lifespan starts and stops them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response

from agent.api.errors import on_aifinops_error, on_http_exception, on_unexpected
from agent.api.middleware import HostCheckMiddleware
from agent.api.routes import build_routes
from agent.errors import AIFinOpsError
from agent.services import Services


def build_asgi_app(services: Services) -> Starlette:
    settings = services.settings.agent

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await services.start()
        try:
            yield
        finally:
            await services.stop()

    middleware = [Middleware(HostCheckMiddleware, allowed=(settings.host, *settings.allowed_hosts))]
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "X-AIFinOps-Feature"],
                expose_headers=["X-AIFinOps-Route", "X-AIFinOps-Cost-USD", "X-AIFinOps-Request-Id"],
            )
        )
    telemetry = services.telemetry

    async def counted_error(request: Request, exc: Exception) -> Response:
        """Every refusal (a 4xx answer) is counted by its type: rate limits, budgets, bad input."""
        if isinstance(exc, AIFinOpsError) and exc.status_code < 500:
            telemetry.http_refusal(exc.error_type)
        return await on_aifinops_error(request, exc)

    return Starlette(
        routes=build_routes(services),
        middleware=middleware,
        exception_handlers={
            AIFinOpsError: counted_error,
            HTTPException: on_http_exception,
            Exception: on_unexpected,
        },
        lifespan=lifespan,
    )
