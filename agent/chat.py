"""One chat request as the pipeline sees it, after the API layer validated it.

Its own module so that the cache keys, the API and the gateway can all name it without importing
each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.providers.base import ChatParams, Message


@dataclass(frozen=True)
class ChatCall:
    requested_model: str
    messages: tuple[Message, ...]
    params: ChatParams
    feature: str = ""
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: send a final usage chunk
    cache_allowed: bool = True  # false for `"cache": false` or `Cache-Control: no-cache`
    operation: str = "chat"  # gen_ai.operation.name: "chat", or "text_completion" (/v1/completions)
