"""The trace viewer's routes: the static files of the package's viewer/ folder, and the few
JSON endpoints the X-Ray API has no operation for (rejected documents, store counts)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from xrayd.server.xray_api import StoreReader, json_response
from xrayd.store import queries

STATIC = Path(__file__).resolve().parent / "viewer"


def routes(reader: StoreReader, info: dict[str, object]) -> list[web.RouteDef]:
    async def index(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def rejected(request: web.Request) -> web.Response:
        try:
            limit = max(1, min(500, int(request.query.get("limit", "100"))))
        except ValueError:
            limit = 100
        return json_response({"Rejected": await reader.run(queries.rejected, limit)})

    async def stats(_request: web.Request) -> web.Response:
        return json_response({**await reader.run(queries.stats), **info})

    return [
        web.get("/", index),
        web.get("/api/rejected", rejected),
        web.get("/api/stats", stats),
        web.static("/viewer", STATIC, append_version=False),
    ]
