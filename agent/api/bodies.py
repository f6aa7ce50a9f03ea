"""Request bodies from outside: a JSON object validated by its pydantic model, or a 400 that names
the field at fault (OpenAI's ``param``). Shared by every ``/v1`` endpoint."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from agent.errors import InvalidRequest

Body = TypeVar("Body", bound=BaseModel)


def parse_body(model: type[Body], payload: Any) -> Body:
    if not isinstance(payload, dict):
        raise InvalidRequest("request body must be a JSON object")
    try:
        return model.model_validate(payload)
    except ValidationError as e:
        raise invalid_body(e) from e


def invalid_body(error: ValidationError) -> InvalidRequest:
    """The first problem pydantic found, as a 400 that names the field."""
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    detail = (first.get("ctx") or {}).get("error")
    message = str(detail) if first["type"] == "value_error" and detail is not None else first["msg"]
    return InvalidRequest(f"{where}: {message}", code="invalid_value", param=where)


def refuse_unknown(fields: Iterable[str]) -> None:
    """A 400 naming every field the endpoint does not support: never silently dropped."""
    unknown = sorted(fields)
    if unknown:
        raise InvalidRequest(
            f"unsupported parameter(s): {', '.join(unknown)}", code="unsupported_parameter", param=unknown[0]
        )
