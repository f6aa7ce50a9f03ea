"""Cloud API keys: from the environment or the OS keyring, never from the ledger or logs."""

from __future__ import annotations

import logging
import os

from agent.settings import CloudEndpoint

log = logging.getLogger(__name__)

KEYRING_SERVICE = "aifinops"


def resolve_api_key(endpoint: CloudEndpoint) -> str | None:
    """The endpoint's key, or None when it needs none (e.g. a vLLM or llama.cpp server)."""
    if endpoint.api_key_env:
        value = os.environ.get(endpoint.api_key_env)
        if value:
            return value
    try:
        import keyring
        from keyring.errors import KeyringError

        try:
            return keyring.get_password(KEYRING_SERVICE, endpoint.name)
        except KeyringError as e:
            log.debug("no keyring backend for endpoint %s: %s", endpoint.name, type(e).__name__)
    except ImportError:
        pass
    return None


def key_source(endpoint: CloudEndpoint) -> str:
    """Where the key would come from, for `aifinops doctor` (never the key itself)."""
    if endpoint.api_key_env and os.environ.get(endpoint.api_key_env):
        return f"environment variable {endpoint.api_key_env}"
    return "OS keyring" if resolve_api_key(endpoint) else "none"
