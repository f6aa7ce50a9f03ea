"""Serving the agent with uvicorn: in the foreground (``aifinops agent run``) or in a thread.

SIGTERM/SIGINT stop accepting connections, give in-flight requests ``shutdown_grace_s`` to
finish, then cancel the rest, which the gateway records as aborted.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import signal
import socket
import threading
import time

import uvicorn

from agent.app import build_asgi_app
from agent.discovery import agent_url, remove_discovery, write_discovery
from agent.errors import ConfigError
from agent.services import Services
from agent.settings import Settings

log = logging.getLogger(__name__)


def _uvicorn_config(services: Services) -> uvicorn.Config:
    agent = services.settings.agent
    return uvicorn.Config(
        build_asgi_app(services),
        host=agent.host,
        port=agent.port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        # Clients reach the agent directly, never through a proxy: no X-Forwarded-For is believed.
        proxy_headers=False,
        timeout_graceful_shutdown=math.ceil(agent.shutdown_grace_s),
        ssl_certfile=agent.tls_certfile or None,
        ssl_keyfile=agent.tls_keyfile or None,
    )


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before serving so port 0 (any free port) is known up front."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror} (is another agent running?)") from exc
    return sock


def run_agent(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT; a graceful stop returns normally (exit status 0)."""
    sock = _bind(settings.agent.host, settings.agent.port)
    port = int(sock.getsockname()[1])
    services = Services.open(settings)
    services.provision()
    server = uvicorn.Server(_uvicorn_config(services))
    url = agent_url(settings.agent, port)
    log.info("aifinops agent on %s (ledger %s)", url, settings.paths.ledger_file)
    # uvicorn handles the signals while serving, then re-raises them to the handlers it found
    # installed. Ours only log, so a graceful stop is not turned into death by signal.
    received: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: received.append(signum))
    write_discovery(settings.paths, url)  # the tray finds us here
    try:
        server.run(sockets=[sock])
    finally:
        remove_discovery(settings.paths)
        sock.close()
    names = ", ".join(signal.Signals(s).name for s in received) or "no signal"
    log.info("aifinops agent stopped (%s)", names)


class AgentThread:
    """The real agent on a real socket, served from a background thread.

    Used by the integration tests, the GUI tests and the benchmarks. Port 0 picks a free port.
    """

    def __init__(self, settings: Settings) -> None:
        self.services = Services.open(settings)
        self.services.provision()
        self._sock = _bind(settings.agent.host, settings.agent.port)
        self.port = self._sock.getsockname()[1]
        self.server = uvicorn.Server(_uvicorn_config(self.services))
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, name="aifinops-agent", daemon=True
        )

    @property
    def base_url(self) -> str:
        """Where a client reaches this agent: https when it serves TLS, a wildcard bind as loopback."""
        return agent_url(self.services.settings.agent, self.port)

    def start(self, timeout_s: float = 30.0) -> AgentThread:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the agent did not start")
            time.sleep(0.01)
        return self

    @property
    def server_thread_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_s: float = 30.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout_s)
        self._sock.close()
