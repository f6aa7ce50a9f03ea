"""``POST /v1/embeddings`` on the wire: OpenAI's request in, OpenAI's list of embeddings out
(floats, or base64 of little-endian float32 as the ``openai`` SDK asks by default), with the
agent's cost headers. The pipeline is ``agent.embedding_gateway``."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, Literal

from starlette.responses import Response

from agent.api import schemas
from agent.api.bodies import parse_body, refuse_unknown
from agent.api.features import feature_tag
from agent.embedding_gateway import EmbeddingCall, EmbeddingResult
from agent.money import format_usd
from agent.providers.base import EmbeddingInputs

Encoding = Literal["float", "base64"]


def embedding_call(payload: Any, headers: Mapping[str, str]) -> tuple[EmbeddingCall, Encoding]:
    """The validated call and the encoding the client wants its vectors in."""
    body = parse_body(schemas.EmbeddingRequest, payload)
    refuse_unknown(body.extra_fields())
    call = EmbeddingCall(body.model, _inputs(body.input), body.dimensions, feature_tag(headers, body.metadata))
    return call, body.encoding_format or "float"


def _inputs(items: list[str] | list[list[int]]) -> EmbeddingInputs:
    texts = tuple(item for item in items if isinstance(item, str))
    if len(texts) == len(items):
        return texts
    return tuple(tuple(item) for item in items if not isinstance(item, str))


def embedding_response(result: EmbeddingResult, encoding: Encoding) -> Response:
    if encoding == "base64":
        little_endian = result.vectors.astype("<f4", copy=False)
        vectors: list[Any] = [base64.b64encode(row.tobytes()).decode() for row in little_endian]
    else:
        vectors = result.vectors.tolist()  # the float32 values, exactly
    cost = format_usd(result.price.cost_micro_usd)
    body = schemas.EmbeddingList(
        data=[schemas.EmbeddingOut.model_construct(index=i, embedding=v) for i, v in enumerate(vectors)],
        model=result.model,
        usage=schemas.EmbeddingUsage(prompt_tokens=result.usage.input_tokens, total_tokens=result.usage.input_tokens),
        x_aifinops=schemas.EmbeddingInfo(
            request_id=result.request_id,
            route=result.route,
            model=result.model,
            cost_usd=cost,
            cost_micro_usd=result.price.cost_micro_usd,
            price_source=result.price.source,
            tokens_estimated=result.usage.estimated,
        ),
    )
    headers = {
        "X-AIFinOps-Route": result.route,
        "X-AIFinOps-Cost-USD": cost,
        "X-AIFinOps-Request-Id": result.request_id,
    }
    return Response(body.model_dump_json(), media_type="application/json", headers=headers)
