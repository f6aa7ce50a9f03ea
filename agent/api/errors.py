"""Error -> HTTP status map. Every error body is OpenAI-style: {"error": {"type", "message"}}."""

from __future__ import annotations

import logging
import math

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from agent.api.schemas import ErrorBody, ErrorDetail
from agent.errors import AIFinOpsError, BudgetExceeded, InvalidRequest, RateLimited

log = logging.getLogger(__name__)

_HTTP_TYPES = {404: "not_found_error", 405: "method_not_allowed", 401: "authentication_error"}


def error_json(
    status: int, error_type: str, message: str, code: str | None = None, param: str | None = None
) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(message=message, type=error_type, code=code, param=param))
    return JSONResponse(body.model_dump(), status_code=status)


def error_response(error: AIFinOpsError) -> JSONResponse:
    param = error.param if isinstance(error, InvalidRequest) else None
    response = error_json(error.status_code, error.error_type, error.message, error.code, param)
    if isinstance(error, BudgetExceeded) and error.budget:
        detail = ErrorDetail(message=error.message, type=error.error_type, code=error.code, budget=error.budget)
        response = JSONResponse(ErrorBody(error=detail).model_dump(exclude_none=True), status_code=error.status_code)
    if isinstance(error, RateLimited):
        response.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
    return response


async def on_aifinops_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, AIFinOpsError):  # Starlette only routes AIFinOpsError here
        return await on_unexpected(request, exc)
    return error_response(exc)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, HTTPException):
        return await on_unexpected(request, exc)
    return error_json(exc.status_code, _HTTP_TYPES.get(exc.status_code, "invalid_request_error"), str(exc.detail))


async def on_unexpected(_request: Request, exc: Exception) -> Response:
    log.error("unexpected error while serving a request", exc_info=exc)
    return error_json(500, "internal_error", "internal error: see the agent log")
