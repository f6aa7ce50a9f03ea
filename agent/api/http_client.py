"""The httpx client the CLI and the tray reach the agent with.

httpx reads the trust store when a client is made (``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` name one
other than the system's, as for an agent serving TLS with an internal CA): one that cannot be read
is a one-line error naming it, not a traceback.
"""

from __future__ import annotations

import os
import ssl

import httpx

from agent.errors import ConfigError


def open_http_client(base_url: str, timeout: float | httpx.Timeout) -> httpx.Client:
    try:
        return httpx.Client(base_url=base_url, timeout=timeout)
    except (OSError, ssl.SSLError) as e:
        where = _unreadable_trust_store()
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(
            f"cannot read the certificates of {where}: {reason} (point it at a readable PEM bundle, or unset it)"
        ) from None


def _unreadable_trust_store() -> str:
    """Which trust store the error is about: the variable naming what is not there, if one does."""
    cert_file, cert_dir = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if cert_file is not None and not os.path.isfile(cert_file):
        return f"SSL_CERT_FILE={cert_file!r}"
    if cert_dir is not None and not os.path.isdir(cert_dir):
        return f"SSL_CERT_DIR={cert_dir!r}"
    named = [f"{name}={value!r}" for name, value in (("SSL_CERT_FILE", cert_file), ("SSL_CERT_DIR", cert_dir)) if value]
    return " and ".join(named) or "the system's trust store"
