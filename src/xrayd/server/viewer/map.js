// The service map: GetServiceGraph's services (botocore's Service, Edge, HistogramEntry shapes)
// laid out by the daemon's /api/layout (grandalf's layered layout) and drawn as SVG with text
// labels, pan and zoom; a node's statistics, histogram and a link to its traces on click.
import {$, api, el, fmtDur, isObject, num, objects, pct, svg, text} from "./util.js";

const PAD_X = 12, LINE_H = 15;

function stats(st) {
  const s = isObject(st) ? st : {};
  const errors = isObject(s.ErrorStatistics) ? s.ErrorStatistics : {};
  const faults = isObject(s.FaultStatistics) ? s.FaultStatistics : {};
  const total = num(s.TotalCount) ?? 0;
  return {
    total, ok: num(s.OkCount) ?? 0,
    errors: num(errors.TotalCount) ?? 0, throttles: num(errors.ThrottleCount) ?? 0,
    faults: num(faults.TotalCount) ?? 0,
    avg: total ? (num(s.TotalResponseTime) ?? 0) / total : null,
  };
}

// Fill by the share of failed requests: faults first, then errors and throttles.
export const HEALTH = [
  {label: "fault (5xx) ≥ 10%", fill: "#f4a594", test: (s) => s.total && s.faults / s.total >= 0.1},
  {label: "fault (5xx) < 10%", fill: "#f9d0c7", test: (s) => s.faults > 0},
  {label: "error (4xx) or throttle", fill: "#fde3b8", test: (s) => s.errors > 0},
  {label: "all OK", fill: "#d6ecd9", test: () => true},
  {label: "no statistics", fill: "#eceff3", test: () => false},
];

function health(s, hasStats) {
  if (!hasStats) return HEALTH[HEALTH.length - 1];
  return HEALTH.find((h) => h.test(s));
}

// X-Ray's client node has a Type and no Name (xrayd's is named "client" too).
const label = (service) => text(service.Name, text(service.Type, "?"));
const isClient = (service) => service.Type === "client";

function nodeLines(service, s) {
  const name = label(service);
  const kind = text(service.Type, "");
  const lines = kind && kind !== name ? [name, kind] : [name];
  if (s.total) lines.push(`${s.total} req · ${fmtDur(s.avg)} avg`);
  return lines;
}

// The filter that selects a node's traces: by name and type when it has a type (an inferred
// "DynamoDB" is not a service of that name), by name alone otherwise; none for the client.
export function tracesFilter(service) {
  if (isClient(service) || typeof service.Name !== "string") return null;
  if (typeof service.Type !== "string" || !service.Type) return `service(${JSON.stringify(service.Name)})`;
  return `service(id(name: ${JSON.stringify(service.Name)}, type: ${JSON.stringify(service.Type)}))`;
}

let measurer = null;
function measure(value, bold) {
  if (!measurer) {
    measurer = svg("text", {class: "node-label", x: -1000, y: -1000});
    $("#map-svg").append(measurer);
  }
  if (!measurer.isConnected) $("#map-svg").append(measurer);
  measurer.setAttribute("class", bold ? "node-label name" : "node-label");
  measurer.textContent = value;
  return measurer.getComputedTextLength();
}

export class ServiceMap {
  constructor(onSelect, onTraces) {
    this.onSelect = onSelect;
    this.onTraces = onTraces;
    this.svg = $("#map-svg");
    this.services = [];
    this.view = null;
    this.full = null;
    this.key = null;
    this.installPanZoom();
    $("#zoom-in").addEventListener("click", () => this.zoom(0.8));
    $("#zoom-out").addEventListener("click", () => this.zoom(1.25));
    $("#zoom-fit").addEventListener("click", () => this.fit());
  }

  async show(range, selected, force) {
    const key = range.key; // "last-3600" or "start-end": selecting a service does not refetch
    if (force || key !== this.key) {
      this.key = key;
      $("#map-error").hidden = true;
      let data;
      try {
        data = await api("/ServiceGraph", {StartTime: range.start, EndTime: range.end});
      } catch (err) {
        $("#map-error").textContent = err.message;
        $("#map-error").hidden = false;
        return;
      }
      this.services = objects(data.Services);
      await this.draw();
    }
    this.select(selected);
  }

  async draw() {
    const services = this.services;
    const refOf = (s) => String(s.ReferenceId ?? text(s.Name));
    const byRef = new Map(services.map((s) => [refOf(s), s]));
    this.svg.replaceChildren();
    measurer = null;
    const nodes = services.map((s) => {
      const st = stats(s.SummaryStatistics);
      const lines = nodeLines(s, st);
      const w = Math.ceil(Math.max(...lines.map((l, i) => measure(l, i === 0)))) + 2 * PAD_X;
      return {id: refOf(s), w: Math.max(w, 60), h: lines.length * LINE_H + 14, lines, st, service: s};
    });
    const edges = [];
    for (const s of services) {
      for (const e of objects(s.Edges)) {
        const to = String(e.ReferenceId);
        if (byRef.has(to)) edges.push({from: refOf(s), to, edge: e});
      }
    }
    this.renderEdgeTable(edges, byRef);
    if (!nodes.length) {
      this.svg.append(svg("text", {x: 20, y: 30}, "No services in this time range."));
      this.svg.setAttribute("viewBox", "0 0 400 60");
      return;
    }
    const answer = await fetch("/api/layout", {
      method: "POST", credentials: "same-origin", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({nodes: nodes.map(({id, w, h}) => ({id, w, h})),
        edges: edges.map(({from, to}) => ({from, to}))}),
    });
    const layout = await answer.json();
    if (!answer.ok || !layout.nodes) {
      this.svg.append(svg("text", {x: 20, y: 30},
        `The map cannot be drawn: ${text(layout.message || answer.statusText)}. The edge table below lists every call.`));
      this.svg.setAttribute("viewBox", "0 0 900 60");
      return;
    }
    const defs = svg("defs", {}, svg("marker", {id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5",
      markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse"},
    svg("path", {d: "M0,0 L10,5 L0,10 z", fill: "#8a96a3"})));
    const world = svg("g", {id: "map-world"});
    const routes = new Map((layout.edges || []).map((r) => [`${r.from}\u0000${r.to}`, r.points]));
    for (const {from, to, edge} of edges) {
      const points = routes.get(`${from}\u0000${to}`);
      if (!points) continue;
      const d = points.map((p, i) => `${i ? "L" : "M"}${p[0].toFixed(1)},${p[1].toFixed(1)}`).join(" ");
      const st = stats(edge.SummaryStatistics);
      const tip = `${label(byRef.get(from))} → ${label(byRef.get(to))}: ${st.total} calls, ` +
        `${st.errors} errors, ${st.faults} faults, ${st.avg === null ? "no latency" : fmtDur(st.avg) + " avg"}` +
        (edge.EdgeType ? ` (${text(edge.EdgeType)})` : "");
      world.append(svg("g", {class: "edge-g", "data-from": label(byRef.get(from)), "data-to": label(byRef.get(to))},
        svg("path", {class: "edge", d, "marker-end": "url(#arrow)"}),
        svg("path", {class: "edge-hit", d}, svg("title", {}, tip))));
    }
    for (const n of nodes) {
      const p = layout.nodes[n.id];
      if (!p) continue;
      const x = p.x - n.w / 2, y = p.y - n.h / 2;
      const look = health(n.st, isObject(n.service.SummaryStatistics));
      const name = label(n.service);
      const g = svg("g", {class: "node", "data-name": name, "data-ref": n.id, tabindex: "0",
        role: "button", "aria-label": `${n.lines.join(", ")}; ${look.label}`,
        onclick: () => this.onSelect(name),
        onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); this.onSelect(name); } }},
      svg("rect", {class: "node-box", x, y, width: n.w, height: n.h, rx: 6, fill: look.fill,
        "stroke-width": 1 + Math.min(3, Math.log10(1 + n.st.total))}),
      n.lines.map((line, i) => svg("text", {class: i === 0 ? "node-label name" : "node-label", x: x + PAD_X,
        y: y + 7 + LINE_H * (i + 1) - 3}, line)));
      world.append(g);
    }
    this.svg.append(defs, world);
    this.full = [0, 0, Math.max(layout.width, 200), Math.max(layout.height, 80)];
    this.fit();
    this.drawLegend();
  }

  renderEdgeTable(edges, byRef) {
    $("#edge-list tbody").replaceChildren(...edges.map(({from, to, edge}) => {
      const st = stats(edge.SummaryStatistics);
      return el("tr", {}, el("td", {}, label(byRef.get(from))), el("td", {}, label(byRef.get(to))),
        el("td", {}, st.total), el("td", {}, st.errors), el("td", {}, st.faults), el("td", {}, fmtDur(st.avg ?? 0)));
    }));
  }

  drawLegend() {
    $("#map-legend").replaceChildren(...HEALTH.map((h) => {
      const swatch = el("span", {class: "swatch"});
      swatch.style.background = h.fill;
      return el("span", {class: "legend-item"}, swatch, h.label);
    }), el("span", {class: "legend-item"}, "Border width and label: request count · arrows: calls (hover for counts and latency)"));
  }

  // --- pan and zoom: the viewBox moves, the drawing does not ---------------------------------
  // The whole graph in view, never drawn larger than its natural size.
  fit() {
    if (!this.full) return;
    const [, , w, h] = this.full;
    const width = this.svg.clientWidth || 900;
    const height = Math.min(Math.max(h * Math.min(1, width / w) + 8, 260), Math.max(window.innerHeight * 0.7, 300));
    this.svg.style.height = `${height}px`;
    const scale = Math.min(1, width / w, height / h);
    const vw = width / scale, vh = height / scale;
    this.view = [(w - vw) / 2, (h - vh) / 2, vw, vh];
    this.apply();
  }

  apply() { this.svg.setAttribute("viewBox", this.view.map((v) => v.toFixed(1)).join(" ")); }

  zoom(factor, cx, cy) {
    if (!this.view) return;
    const [x, y, w, h] = this.view;
    const px = cx ?? x + w / 2, py = cy ?? y + h / 2;
    const nw = Math.min(Math.max(w * factor, 40), this.full[2] * 8);
    const scale = nw / w;
    this.view = [px - (px - x) * scale, py - (py - y) * scale, w * scale, h * scale];
    this.apply();
  }

  toWorld(clientX, clientY) {
    const point = new DOMPoint(clientX, clientY).matrixTransform(this.svg.getScreenCTM().inverse());
    return [point.x, point.y];
  }

  installPanZoom() {
    // Keyboard: arrows pan, + and - zoom (the map itself takes focus; Tab then reaches the nodes).
    this.svg.addEventListener("keydown", (e) => {
      if (!this.view || e.target !== this.svg) return;
      const dx = {ArrowLeft: -1, ArrowRight: 1}[e.key] || 0, dy = {ArrowUp: -1, ArrowDown: 1}[e.key] || 0;
      if (dx || dy) {
        e.preventDefault();
        this.view[0] += dx * this.view[2] * 0.1;
        this.view[1] += dy * this.view[3] * 0.1;
        this.apply();
      } else if (e.key === "+" || e.key === "=") this.zoom(0.8);
      else if (e.key === "-") this.zoom(1.25);
    });
    this.svg.addEventListener("wheel", (e) => {
      if (!this.view) return;
      e.preventDefault();
      const [x, y] = this.toWorld(e.clientX, e.clientY);
      this.zoom(e.deltaY > 0 ? 1.15 : 1 / 1.15, x, y);
    }, {passive: false});
    this.svg.addEventListener("pointerdown", (down) => {
      if (!this.view || down.target.closest(".node")) return;
      const [sx, sy] = this.toWorld(down.clientX, down.clientY);
      this.svg.setPointerCapture(down.pointerId);
      const move = (e) => {
        const [x, y] = this.toWorld(e.clientX, e.clientY);
        this.view[0] -= x - sx;
        this.view[1] -= y - sy;
        this.apply();
      };
      const up = () => {
        this.svg.removeEventListener("pointermove", move);
        this.svg.removeEventListener("pointerup", up);
      };
      this.svg.addEventListener("pointermove", move);
      this.svg.addEventListener("pointerup", up);
    });
  }

  // --- the selected service's statistics -----------------------------------------------------
  select(name) {
    for (const g of this.svg.querySelectorAll(".node")) g.classList.toggle("selected", g.dataset.name === name);
    const box = $("#map-detail");
    const service = name ? this.services.find((s) => label(s) === name) : null;
    if (!service) { box.hidden = true; return; }
    const st = stats(service.SummaryStatistics);
    const histogram = objects(service.ResponseTimeHistogram)
      .map((h) => ({value: num(h.Value), count: num(h.Count)}))
      .filter((h) => h.value !== null && h.count !== null);
    box.replaceChildren(
      el("h3", {}, name, " ", el("span", {class: "kind"}, text(service.Type))),
      el("dl", {class: "overview"},
        el("dt", {}, "Requests"), el("dd", {}, st.total),
        el("dt", {}, "OK"), el("dd", {}, st.ok),
        el("dt", {}, "Errors (4xx)"), el("dd", {}, `${st.errors} (${pct(st.errors, st.total)})`),
        el("dt", {}, "Throttled"), el("dd", {}, st.throttles),
        el("dt", {}, "Faults (5xx)"), el("dd", {}, `${st.faults} (${pct(st.faults, st.total)})`),
        el("dt", {}, "Average response"), el("dd", {}, st.avg === null ? "–" : fmtDur(st.avg))),
      histogram.length ? drawHistogram(histogram) : el("p", {class: "muted"}, "No response-time histogram for this node."),
      tracesFilter(service)
        ? el("button", {id: "service-traces", onclick: () => this.onTraces(tracesFilter(service))}, `Traces of ${name}`) : null);
    box.hidden = false;
  }
}

function drawHistogram(entries) {
  entries.sort((a, b) => a.value - b.value);
  const W = 300, H = 90, pad = 16;
  const top = Math.max(...entries.map((e) => e.count), 1);
  const barW = (W - 2 * pad) / entries.length;
  return svg("svg", {class: "histogram", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "response time histogram"},
    entries.map((e, i) => {
      const h = (e.count / top) * (H - 2 * pad);
      return svg("rect", {x: pad + i * barW, width: Math.max(1, barW - 1), y: H - pad - h, height: h, class: "dist-bar"},
        svg("title", {}, `${e.count} at ${fmtDur(e.value)}`));
    }),
    svg("text", {class: "tick-label", x: pad, y: H - 3}, fmtDur(entries[0].value)),
    svg("text", {class: "tick-label", x: W - pad, y: H - 3, "text-anchor": "end"}, fmtDur(entries[entries.length - 1].value)),
    svg("text", {class: "tick-label", x: pad, y: 10}, `${top} max`));
}
