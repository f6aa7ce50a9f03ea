"""The `agent` group: run the agent in the foreground."""

from __future__ import annotations

import click

from agent.cli.common import _Context, _Group, main, pass_ctx

# -- agent ----------------------------------------------------------------------------------


@main.group(cls=_Group)
def agent() -> None:
    """Run the background agent."""


@agent.command("run")
@click.option("--host", help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default 8765).")
@pass_ctx
def agent_run(obj: _Context, host: str | None, port: int | None) -> None:
    """Serve the OpenAI-compatible API until SIGTERM/SIGINT."""
    from agent.logs import setup_logging
    from agent.server import run_agent

    settings = obj.settings(host=host, port=port)
    settings.paths.ensure()
    logs = settings.logging
    setup_logging(settings.paths.log_dir, settings.agent.log_level, fmt=logs.format, max_bytes=logs.max_bytes,
                  backups=logs.backups)  # fmt: skip
    run_agent(settings)
    _leave_without_finalizing_native_threads()


def _leave_without_finalizing_native_threads() -> None:
    """Exit now when a daemon thread is still inside native code.

    The cache warm-up loads the ONNX embedder and compiles the similarity kernels in a daemon
    thread (a stop must not wait for a first run's compile). Stopped a moment after start, the
    interpreter's normal exit runs C++ static destructors under that thread and the process dies
    of SIGABRT ("terminate called without an active exception"), which systemd counts as a
    failed stop. By now the server has stopped and the ledger is closed: flush and leave.
    """
    import logging
    import os
    import sys
    import threading

    if any(t.is_alive() for t in threading.enumerate() if t is not threading.main_thread()):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
