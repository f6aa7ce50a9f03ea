"""Which provider serves which model name, built once from the settings."""

from __future__ import annotations

from agent.errors import ConfigError, ModelNotFound
from agent.models.store import ModelStore
from agent.providers.azure_openai import AzureOpenAIProvider
from agent.providers.base import Provider
from agent.providers.keys import resolve_api_key
from agent.providers.local_engine import LocalEngineProvider
from agent.providers.local_llama import LocalLlamaProvider
from agent.providers.openai_compat import OpenAICompatProvider
from agent.settings import Settings

# One class per `kind` of [[cloud]] endpoint.
CLOUD_PROVIDERS: dict[str, type[OpenAICompatProvider]] = {
    "openai": OpenAICompatProvider,
    "azure": AzureOpenAIProvider,
}


class ProviderRegistry:
    def __init__(self, providers: list[Provider]) -> None:
        self.providers = providers
        self._by_model: dict[str, Provider] = {}
        for provider in providers:
            for model in provider.models():
                if model in self._by_model or model == "auto":
                    raise ConfigError(f"model name {model!r} is configured twice (or is the reserved 'auto')")
                self._by_model[model] = provider

    @classmethod
    def from_settings(cls, settings: Settings, store: ModelStore) -> ProviderRegistry:
        providers: list[Provider] = [LocalLlamaProvider(c, store) for c in settings.local_models]
        hourly = settings.pricing.local_usd_per_hour
        providers += [LocalEngineProvider(e, resolve_api_key(e.endpoint()), hourly) for e in settings.local_engines]
        providers += [CLOUD_PROVIDERS[e.kind](e, resolve_api_key(e)) for e in settings.cloud]
        return cls(providers)

    def model_names(self) -> list[str]:
        return sorted(self._by_model)

    def resolve(self, model: str) -> Provider:
        provider = self._by_model.get(model)
        if provider is None:
            raise ModelNotFound(
                f"model {model!r} is not configured here; available: " + ", ".join(["auto", *self.model_names()]),
                code="model_not_found",
            )
        return provider

    def local(self) -> list[LocalLlamaProvider]:
        return [p for p in self.providers if isinstance(p, LocalLlamaProvider)]

    async def close(self) -> None:
        for provider in self.providers:
            await provider.close()
