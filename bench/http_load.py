"""A lean HTTP/1.1 load generator (asyncio streams, keep-alive), run as its own process.

Usage: python bench/http_load.py URL TOKEN BODY_JSON CONCURRENCY REQUESTS
(BODY_JSON may be @FILE: a body too long for a command line, e.g. a 100k-token prompt. Each
"#SEQ#" in the body becomes a number unique to the request, so that no request repeats another:
what a prompt costs the first time it is seen.)
Prints one JSON object: latencies_ms (sorted), elapsed_s, errors.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

_SEQ = iter(range(1 << 62))


def _numbered(request: bytes) -> bytes:
    """The request with each #SEQ# of its body made unique (digits only: the JSON stays valid)."""
    head, _, body = request.partition(b"\r\n\r\n")
    body = body.replace(b"#SEQ#", b"%012d" % next(_SEQ))
    head = b"\r\n".join(
        b"Content-Length: %d" % len(body) if line.lower().startswith(b"content-length:") else line
        for line in head.split(b"\r\n")
    )
    return head + b"\r\n\r\n" + body


async def worker(host: str, port: int, request: bytes, count: int, latencies: list[float], errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    fresh = b"#SEQ#" in request
    for _ in range(count):
        message = _numbered(request) if fresh else request
        started = time.perf_counter()
        writer.write(message)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        latencies.append((time.perf_counter() - started) * 1000)
        if status != 200:
            errors.append(str(status))
    writer.close()


async def main(url: str, token: str, body: str, concurrency: int, requests: int) -> None:
    parts = urlsplit(url)
    payload = (Path(body[1:]).read_text(encoding="utf-8") if body.startswith("@") else body).encode()
    request = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    latencies: list[float] = []
    errors: list[str] = []
    per_worker = requests // concurrency
    started = time.perf_counter()
    await asyncio.gather(
        *(
            worker(parts.hostname or "127.0.0.1", parts.port or 80, request, per_worker, latencies, errors)
            for _ in range(concurrency)
        )
    )
    elapsed = time.perf_counter() - started
    print(
        json.dumps(
            {
                "latencies_ms": sorted(latencies),
                "elapsed_s": elapsed,
                "errors": errors[:5],
                "error_count": len(errors),
            }
        )
    )


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    url, token, body, concurrency, requests = sys.argv[1:6]
    asyncio.run(main(url, token, body, int(concurrency), int(requests)))
