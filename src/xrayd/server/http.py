"""The TCP side of the daemon: one aiohttp application on the TCP address, served from an event
loop in a thread of its own (the UDP path and the uploads are plain threads). What the app
answers depends on the mode: the SigV4 signing proxy, or in offline mode the X-Ray API and the
viewer."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future

from aiohttp import web

from xrayd.receivers.udp import split_address


class HttpServer:
    def __init__(self, address: str, make_app: Callable[[], web.Application]) -> None:
        self.address = address
        self.make_app = make_app
        self.loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, name="http", daemon=True)
        self.bound: tuple[str, int] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Listen; raises OSError (e.g. address in use) when the port cannot be bound."""
        self._thread.start()
        future: Future = asyncio.run_coroutine_threadsafe(self._start(), self.loop)
        future.result(timeout)

    async def _start(self) -> None:
        host, port = split_address(self.address)
        self._runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host or None, port, reuse_address=True)
        await site.start()
        server = site._server
        if server is not None and server.sockets:
            self.bound = server.sockets[0].getsockname()[:2]

    def stop(self, timeout: float = 5.0) -> None:
        if not self._thread.is_alive():
            return
        if self._runner is not None:
            future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop)
            with contextlib.suppress(Exception):
                future.result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
