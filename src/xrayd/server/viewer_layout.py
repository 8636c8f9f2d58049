"""Service map layout for the viewer: a layered (Sugiyama) drawing computed by grandalf, left to
right, so callers sit left of what they call. The browser sends each node's box size (it knows
its text widths) and the edges; the answer is the box centres and the edge polylines, in a
frame whose top-left corner is (0, 0). Boxes in one layer never overlap: grandalf spaces a
layer's nodes by their sizes, and unconnected parts of the graph are stacked one under another."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from grandalf.graphs import Edge, Graph, Vertex
from grandalf.layouts import SugiyamaLayout

# A layered layout's cost grows quickly: 150 nodes and 450 edges take about a second of CPU
# (500 and 2,000 took minutes); service maps are far smaller.
MAX_NODES = 150
MAX_EDGES = 450
MAX_BOX = 2000.0
LAYER_GAP = 80.0  # between columns: room for the arrows
NODE_GAP = 24.0  # between boxes of one column
PART_GAP = 40.0  # between unconnected parts of the graph
MARGIN = 16.0


class LayoutError(ValueError):
    pass


@dataclass
class _Box:
    """grandalf's view of a vertex; w and h are swapped in (its layers run top to bottom)."""

    w: float
    h: float
    xy: tuple[float, float] = (0.0, 0.0)


class _Route:
    def __init__(self) -> None:
        self.points: list[tuple[float, float]] = []

    def setpath(self, points: list[Any]) -> None:
        self.points = [(float(x), float(y)) for x, y in points]


def _size(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LayoutError("node sizes must be numbers")
    return min(MAX_BOX, max(1.0, float(value)))


def parse(body: Any) -> tuple[dict[str, tuple[float, float]], list[tuple[str, str]]]:
    """Nodes ``[{"id", "w", "h"}]`` and edges ``[{"from", "to"}]`` from a request body."""
    if not isinstance(body, dict):
        raise LayoutError("body must be an object")
    nodes, edges = body.get("nodes"), body.get("edges", [])
    if not isinstance(nodes, list) or not isinstance(edges, list):
        raise LayoutError("nodes and edges must be lists")
    if len(nodes) > MAX_NODES or len(edges) > MAX_EDGES:
        raise LayoutError(f"at most {MAX_NODES} nodes and {MAX_EDGES} edges")
    sizes: dict[str, tuple[float, float]] = {}
    for node in nodes:
        if not isinstance(node, dict) or not isinstance(node.get("id"), str):
            raise LayoutError("each node needs a string id")
        sizes[node["id"]] = (_size(node.get("w")), _size(node.get("h")))
    pairs = []
    for edge in edges:
        if not isinstance(edge, dict):
            raise LayoutError("each edge must be an object")
        a, b = edge.get("from"), edge.get("to")
        if a not in sizes or b not in sizes:
            raise LayoutError("edges must join known nodes")
        pairs.append((a, b))
    return sizes, pairs


def layout(sizes: dict[str, tuple[float, float]], edges: list[tuple[str, str]]
           ) -> dict[str, Any]:
    """``{"width", "height", "nodes": {id: {x, y, w, h}}, "edges": [{from, to, points}]}``
    with x, y the box centre."""
    vertices = {name: Vertex(name) for name in sizes}
    for name, vertex in vertices.items():
        w, h = sizes[name]
        vertex.view = _Box(w=h, h=w)  # transposed: grandalf's layers are rows
    kept: list[tuple[str, str, Edge]] = []
    seen: set[tuple[str, str]] = set()
    for a, b in edges:
        if a == b or (a, b) in seen:
            continue
        seen.add((a, b))
        edge = Edge(vertices[a], vertices[b])
        edge.view = _Route()
        kept.append((a, b, edge))
    graph = Graph(list(vertices.values()), [edge for _a, _b, edge in kept])
    placed: dict[str, dict[str, float]] = {}
    top = MARGIN
    width = 0.0
    for part in sorted(graph.C, key=lambda c: -c.order()):
        part_nodes = list(part.sV)
        if len(part_nodes) == 1:
            positions = {part_nodes[0].data: (0.0, 0.0)}
        else:
            sug = SugiyamaLayout(part)
            sug.xspace, sug.yspace = NODE_GAP, LAYER_GAP
            sug.init_all()
            sug.draw()
            # grandalf's (x, y) with layers along y; ours has layers along x.
            positions = {v.data: (v.view.xy[1], v.view.xy[0]) for v in part_nodes}
        left = min(x - sizes[n][0] / 2 for n, (x, _y) in positions.items())
        upper = min(y - sizes[n][1] / 2 for n, (_x, y) in positions.items())
        dx, dy = MARGIN - left, top - upper
        bottom = top
        for name, (x, y) in positions.items():
            w, h = sizes[name]
            placed[name] = {"x": x + dx, "y": y + dy, "w": w, "h": h}
            bottom = max(bottom, y + dy + h / 2)
            width = max(width, x + dx + w / 2)
        for a, _b, edge in kept:
            if a in positions:
                edge.view.points = [(y + dx, x + dy) for x, y in edge.view.points]
        top = bottom + PART_GAP
    routes = [{"from": a, "to": b, "points": _ends(edge.view.points, placed[a], placed[b])}
              for a, b, edge in kept]
    return {"width": width + MARGIN, "height": top - PART_GAP + MARGIN, "nodes": placed,
            "edges": routes}


def _border(box: dict[str, float], toward: tuple[float, float]) -> list[float]:
    """Where the line from the box's centre to ``toward`` leaves the box."""
    dx, dy = toward[0] - box["x"], toward[1] - box["y"]
    if dx == 0 and dy == 0:
        return [box["x"], box["y"]]
    scale = min(box["w"] / 2 / abs(dx) if dx else float("inf"),
                box["h"] / 2 / abs(dy) if dy else float("inf"))
    return [box["x"] + dx * scale, box["y"] + dy * scale]


def _ends(points: list[tuple[float, float]], start: dict[str, float], end: dict[str, float]
          ) -> list[list[float]]:
    """The polyline from ``start``'s border to ``end``'s (grandalf draws a reversed edge of a
    cycle backwards, and from centre to centre)."""
    inner = [(x, y) for x, y in points]
    if len(inner) >= 2:
        def dist(p: tuple[float, float], box: dict[str, float]) -> float:
            return (p[0] - box["x"]) ** 2 + (p[1] - box["y"]) ** 2

        if dist(inner[0], end) < dist(inner[0], start):
            inner.reverse()
        inner = inner[1:-1]
    first = inner[0] if inner else (end["x"], end["y"])
    last = inner[-1] if inner else (start["x"], start["y"])
    return [_border(start, first), *[list(p) for p in inner], _border(end, last)]
