"""The trace viewer's routes: the static files of the package's viewer/ folder, and the few
JSON endpoints the X-Ray API has no operation for (rejected documents, store counts)."""

from __future__ import annotations

import mimetypes
from pathlib import Path
from urllib.parse import parse_qs

from xrayd.server.threaded import Request, Response
from xrayd.server.xray_api import StoreReader, json_response
from xrayd.store import queries

STATIC = Path(__file__).resolve().parent / "viewer"
STATIC_PREFIX = "/viewer/"


def static_file(name: str, cache_control: str | None = None) -> Response | None:
    """A file of the viewer folder by its plain name (no folders, so no way out of it)."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    path = STATIC / name
    if not path.is_file():
        return None
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if content_type.startswith("text/") or content_type.endswith("javascript"):
        content_type += "; charset=utf-8"
    headers = [("Cache-Control", cache_control)] if cache_control else []
    return Response(200, path.read_bytes(), headers, content_type=content_type)


def routes(reader: StoreReader, info: dict[str, object]):
    """The viewer's handler: a Response, or None for a request it does not serve."""

    def rejected(request: Request) -> Response:
        values = parse_qs(request.query).get("limit", ["100"])
        try:
            limit = max(1, min(500, int(values[-1])))
        except ValueError:
            limit = 100
        return json_response({"Rejected": reader.run(queries.rejected, limit)})

    def stats(_request: Request) -> Response:
        return json_response({**reader.run(queries.stats), **info})

    api = {"/api/rejected": rejected, "/api/stats": stats}

    def handle(request: Request) -> Response | None:
        if request.method not in ("GET", "HEAD"):
            return None
        path = request.path
        if path == "/":
            return static_file("index.html", "no-cache")
        if path in api:
            return api[path](request)
        if path.startswith(STATIC_PREFIX):
            return static_file(path[len(STATIC_PREFIX):])
        return None

    return handle
