"""Azure OpenAI: the OpenAI wire format at a deployment's URL, with an ``api-key`` header.

A request for model M goes to
``{base_url}/openai/deployments/{deployment of M}/chat/completions?api-version={api_version}``
(embeddings: ``.../embeddings?...``), the deployment being ``deployments[M]`` from the
endpoint's config, else M itself. Retries, streaming and usage are the OpenAI-compatible
provider's. Azure answers with the deployment's underlying model name
(``gpt-4o-mini-2024-07-18``); like every cloud provider this one does not read it, so the agent
reports, records and prices the configured name M.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from agent.providers.openai_compat import OpenAICompatProvider
from agent.settings import CloudEndpoint


class AzureOpenAIProvider(OpenAICompatProvider):
    def __init__(self, endpoint: CloudEndpoint, api_key: str | None) -> None:
        super().__init__(endpoint, None)
        self._headers = {"api-key": api_key} if api_key else {}
        self._chat_urls = {model: deployment_url(endpoint, model, "chat/completions") for model in endpoint.models}

    def _chat_url(self, model: str) -> str:
        return self._chat_urls.get(model) or deployment_url(self._endpoint, model, "chat/completions")

    def _embeddings_url(self, model: str) -> str:
        return deployment_url(self._endpoint, model, "embeddings")


def deployment_url(endpoint: CloudEndpoint, model: str, operation: str) -> str:
    """The URL of `operation` ("chat/completions", "embeddings") on the deployment serving `model`."""
    deployment = quote(endpoint.deployment(model), safe="")
    query = urlencode({"api-version": endpoint.api_version})
    return f"{endpoint.base_url.rstrip('/')}/openai/deployments/{deployment}/{operation}?{query}"
