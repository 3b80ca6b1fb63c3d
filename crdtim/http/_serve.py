"""Running an ASGI app with Hypercorn's trio worker, inside the caller's trio run (beside a
Node, in `crdtim serve --http`). No HTTP parsing of our own: Hypercorn (h11/h2) does it.
"""

from __future__ import annotations

import logging

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import Framework

__all__ = ["KEEP_ALIVE_SECONDS", "serve_http"]

#: Seconds an idle keep-alive connection is kept open.
KEEP_ALIVE_SECONDS = 30.0


async def serve_http(app: Framework, host: str, port: int, *,
                     task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve `app` on host:port until cancelled; `await nursery.start(serve_http, ...)`
    returns the port listened on (useful with port 0)."""
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("crdtim.http")
    config.include_server_header = False
    config.keep_alive_timeout = KEEP_ALIVE_SECONDS
    config.graceful_timeout = 1.0  # event streams never end by themselves
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(_serve, app, config)
        task_status.started(int(binds[0].rsplit(":", 1)[1]))


async def _serve(app: Framework, config: Config, *,
                 task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    await serve(app, config, task_status=task_status)
