// xrayd trace viewer: plain JavaScript, talking to the daemon's own X-Ray API.
"use strict";

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path, body) {
  const response = await fetch(path, {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body || {}),
  });
  const data = await response.json();
  if (!response.ok) throw new Error(`${data.__type || response.status}: ${data.message || ""}`);
  return data;
}

const state = { nextToken: null, selected: null, known: new Set(), timer: null, busy: false };

function fmtTime(epoch) {
  const d = new Date(epoch * 1000);
  return d.toLocaleTimeString([], {hour12: false}) + "." + String(d.getMilliseconds()).padStart(3, "0");
}
function fmtDur(seconds) {
  if (seconds === undefined || seconds === null) return "";
  return seconds < 1 ? `${(seconds * 1000).toFixed(1)} ms` : `${seconds.toFixed(3)} s`;
}
function flags(obj) {
  const out = [];
  if (obj.HasFault || obj.fault) out.push(el("span", {class: "badge fault"}, "fault"));
  if (obj.HasError || obj.error) out.push(el("span", {class: "badge error"}, "error"));
  if (obj.HasThrottle || obj.throttle) out.push(el("span", {class: "badge throttle"}, "throttle"));
  if (obj.IsPartial || obj.in_progress) out.push(el("span", {class: "badge partial"}, "in progress"));
  if (!out.length) out.push(el("span", {class: "badge ok"}, "ok"));
  return out;
}
function annotationText(annotations) {
  return Object.entries(annotations || {}).map(([key, values]) => {
    const v = values[0].AnnotationValue;
    const value = "StringValue" in v ? JSON.stringify(v.StringValue)
      : "NumberValue" in v ? v.NumberValue : v.BooleanValue;
    return `${key}=${value}`;
  }).join(" ");
}

function timeRange() {
  const end = Date.now() / 1000 + 60;
  return {StartTime: end - 60 - Number($("#range").value), EndTime: end};
}

async function loadTraces(append) {
  if (state.busy) return;
  state.busy = true;
  const body = {...timeRange()};
  const filter = $("#filter").value.trim();
  if (filter) body.FilterExpression = filter;
  if (append && state.nextToken) body.NextToken = state.nextToken;
  try {
    const data = await api("/TraceSummaries", body);
    $("#query-error").hidden = true;
    const tbody = $("#trace-list tbody");
    if (!append) tbody.replaceChildren();
    for (const s of data.TraceSummaries) tbody.append(traceRow(s));
    state.nextToken = data.NextToken || null;
    $("#more").hidden = !state.nextToken;
    $("#summary-line").textContent =
      `${tbody.rows.length} traces shown of ${data.TracesProcessedCount} in the time range` +
      (filter ? " (filtered)" : "");
  } catch (err) {
    $("#query-error").textContent = err.message;
    $("#query-error").hidden = false;
  } finally {
    state.busy = false;
  }
}

function traceRow(s) {
  const http = s.Http || {};
  const row = el("tr", {"data-trace": s.Id, onclick: () => openTrace(s.Id)},
    el("td", {}, fmtTime(s.StartTime)),
    el("td", {class: "mono"}, s.Id),
    el("td", {}, s.EntryPoint ? s.EntryPoint.Name : ""),
    el("td", {}, fmtDur(s.Duration)),
    el("td", {}, fmtDur(s.ResponseTime)),
    el("td", {class: "mono"}, [http.HttpMethod, http.HttpStatus, http.HttpURL].filter((x) => x !== undefined).join(" ")),
    el("td", {}, flags(s)),
    el("td", {class: "mono"}, annotationText(s.Annotations)));
  if (s.Id === state.selected) row.classList.add("selected");
  return row;
}

// --- timeline ---------------------------------------------------------------------------
function flatten(entity, depth, out, kind) {
  out.push({entity, depth, kind});
  for (const sub of entity.subsegments || []) flatten(sub, depth + 1, out, "subsegment");
  return out;
}

async function openTrace(traceId) {
  state.selected = traceId;
  for (const row of document.querySelectorAll("#trace-list tr")) {
    row.classList.toggle("selected", row.dataset.trace === traceId);
  }
  const data = await api("/Traces", {TraceIds: [traceId]});
  const trace = data.Traces[0];
  $("#detail").hidden = false;
  $("#detail-title").textContent = `Trace ${traceId}` + (trace ? ` — ${fmtDur(trace.Duration)}` : " (not found)");
  const timeline = $("#timeline");
  timeline.replaceChildren();
  $("#entity").replaceChildren();
  if (!trace) return;
  const docs = trace.Segments.map((s) => JSON.parse(s.Document));
  docs.sort((a, b) => a.start_time - b.start_time);
  const rows = [];
  for (const doc of docs) flatten(doc, 0, rows, doc.type === "subsegment" ? "subsegment" : "segment");
  const start = Math.min(...rows.map((r) => r.entity.start_time));
  const end = Math.max(...rows.map((r) => r.entity.end_time || r.entity.start_time));
  const span = Math.max(end - start, 1e-6);
  for (const {entity, depth, kind} of rows) {
    const stop = entity.end_time || end;
    const cls = ["wf-bar", kind];
    if (entity.in_progress) cls.push("partial");
    else if (entity.fault) cls.push("fault");
    else if (entity.throttle) cls.push("throttle");
    else if (entity.error) cls.push("error");
    const bar = el("div", {class: cls.join(" "),
      style: `left:${((entity.start_time - start) / span) * 100}%;width:${((stop - entity.start_time) / span) * 100}%`});
    const row = el("div", {class: "wf-row", "data-id": entity.id},
      el("div", {class: "wf-name", style: `padding-left:${depth * 14}px`},
        entity.name, el("span", {class: "kind"}, kind === "segment" ? (entity.origin || "segment") : (entity.namespace || "")),
        " ", ...(entity.fault || entity.error || entity.throttle ? flags(entity) : [])),
      el("div", {class: "wf-track"}, bar),
      el("div", {class: "wf-dur"}, entity.in_progress ? "…" : fmtDur(stop - entity.start_time)));
    row.addEventListener("click", () => {
      for (const r of timeline.querySelectorAll(".wf-row")) r.classList.remove("selected");
      row.classList.add("selected");
      showEntity(entity, kind);
    });
    timeline.append(row);
  }
  const firstProblem = rows.find((r) => r.entity.cause) || rows[0];
  showEntity(firstProblem.entity, firstProblem.kind);
}

function section(title, value) {
  if (value === undefined || value === null) return null;
  if (typeof value === "object" && !Object.keys(value).length) return null;
  return [el("h3", {}, title), el("pre", {}, JSON.stringify(value, null, 2))];
}

function showEntity(entity, kind) {
  const box = $("#entity");
  box.replaceChildren(el("h3", {}, `${kind} ${entity.name} (${entity.id})`),
    el("div", {}, flags(entity), ` started ${fmtTime(entity.start_time)}`,
      entity.end_time ? `, took ${fmtDur(entity.end_time - entity.start_time)}` : ", in progress"));
  const cause = entity.cause;
  if (cause && typeof cause === "object") {
    box.append(el("h3", {}, "Errors and exceptions"));
    for (const ex of cause.exceptions || []) {
      box.append(el("div", {class: "exception"},
        el("div", {}, el("b", {}, ex.type || "Exception"), ": ", ex.message || ""),
        ...(ex.stack || []).map((f) => el("div", {class: "stack"}, `  at ${f.label || "?"} (${f.path || "?"}:${f.line ?? "?"})`))));
    }
  } else if (typeof cause === "string") {
    box.append(el("h3", {}, "Errors and exceptions"), el("div", {}, `exception id ${cause}`));
  }
  for (const [title, key] of [["Annotations", "annotations"], ["HTTP", "http"], ["SQL", "sql"],
    ["AWS", "aws"], ["Metadata", "metadata"], ["Service", "service"], ["User", "user"]]) {
    const part = section(title, entity[key]);
    if (part) box.append(...part);
  }
}

// --- service map ------------------------------------------------------------------------
async function loadMap() {
  const data = await api("/ServiceGraph", timeRange());
  drawMap(data.Services);
}

function drawMap(services) {
  const svg = $("#map-svg");
  const ns = "http://www.w3.org/2000/svg";
  const make = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  };
  svg.replaceChildren();
  const defs = make("defs", {});
  const marker = make("marker", {id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto"});
  marker.append(make("path", {d: "M0,0 L10,5 L0,10 z", fill: "#8a96a3"}));
  defs.append(marker);
  svg.append(defs);
  const byRef = new Map(services.map((s) => [s.ReferenceId, s]));
  const depth = new Map();
  const roots = services.filter((s) => s.Root);
  const queue = (roots.length ? roots : services.slice(0, 1)).map((s) => [s.ReferenceId, 0]);
  while (queue.length) {
    const [ref, d] = queue.shift();
    if (depth.has(ref)) continue;
    depth.set(ref, d);
    for (const e of byRef.get(ref).Edges) queue.push([e.ReferenceId, d + 1]);
  }
  for (const s of services) if (!depth.has(s.ReferenceId)) depth.set(s.ReferenceId, 0);
  const columns = new Map();
  for (const [ref, d] of depth) { if (!columns.has(d)) columns.set(d, []); columns.get(d).push(ref); }
  const pos = new Map();
  const width = svg.clientWidth || 900;
  const colWidth = Math.max(180, width / Math.max(1, columns.size));
  const height = Math.max(480, Math.max(...[...columns.values()].map((c) => c.length)) * 90 + 40);
  svg.style.height = `${height}px`;
  for (const [d, refs] of columns) {
    refs.forEach((ref, i) => pos.set(ref, {x: 80 + d * colWidth, y: (height / (refs.length + 1)) * (i + 1)}));
  }
  const edgeRows = $("#edge-list tbody");
  edgeRows.replaceChildren();
  for (const s of services) {
    for (const e of s.Edges) {
      const a = pos.get(s.ReferenceId), b = pos.get(e.ReferenceId);
      const st = e.SummaryStatistics;
      svg.append(make("line", {class: "edge", x1: a.x + 30, y1: a.y, x2: b.x - 30, y2: b.y}));
      const errors = st.ErrorStatistics.TotalCount, faults = st.FaultStatistics.TotalCount;
      svg.append(make("text", {class: "edge-label", x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 - 6, "text-anchor": "middle"},
        `${st.TotalCount} calls, ${pct(errors + faults, st.TotalCount)} err`));
      edgeRows.append(el("tr", {}, el("td", {}, s.Name), el("td", {}, byRef.get(e.ReferenceId).Name),
        el("td", {}, st.TotalCount), el("td", {}, errors), el("td", {}, faults),
        el("td", {}, fmtDur(st.TotalCount ? st.TotalResponseTime / st.TotalCount : 0))));
    }
  }
  for (const s of services) {
    const p = pos.get(s.ReferenceId);
    const st = s.SummaryStatistics;
    const bad = (st.FaultStatistics.TotalCount + st.ErrorStatistics.TotalCount) / Math.max(1, st.TotalCount);
    const color = st.FaultStatistics.TotalCount ? "#f9d0c7" : st.ErrorStatistics.TotalCount ? "#fde3b8" : "#d6ecd9";
    const g = make("g", {class: "node", "data-name": s.Name});
    g.append(make("circle", {cx: p.x, cy: p.y, r: 28, fill: color}));
    g.append(make("text", {x: p.x, y: p.y + 44, "text-anchor": "middle"}, `${s.Name}`));
    g.append(make("text", {x: p.x, y: p.y + 4, "text-anchor": "middle"}, `${st.TotalCount}`));
    g.append(make("text", {x: p.x, y: p.y + 58, "text-anchor": "middle", class: "edge-label"},
      `${s.Type} · ${pct(bad * st.TotalCount, st.TotalCount)} err`));
    svg.append(g);
  }
}
function pct(part, total) { return total ? `${Math.round((part / total) * 100)}%` : "0%"; }

// --- rejected ---------------------------------------------------------------------------
async function loadRejected() {
  const response = await fetch("/api/rejected");
  const data = await response.json();
  const tbody = $("#rejected-list tbody");
  tbody.replaceChildren(...data.Rejected.map((r) => el("tr", {},
    el("td", {}, fmtTime(r.Received)), el("td", {}, r.ErrorCode), el("td", {}, r.Reason),
    el("td", {class: "mono"}, r.Document.slice(0, 500)))));
}

async function loadInfo() {
  try {
    const info = await (await fetch("/api/stats")).json();
    $("#store-info").textContent = `${info.traces} traces · ${info.segments} documents · store ${info.store}`;
    $("#rejected-count").textContent = info.rejected ? `(${info.rejected})` : "";
  } catch (err) { /* the daemon may be restarting */ }
}

// --- wiring -----------------------------------------------------------------------------
function activeTab() { return document.querySelector(".tab.active").dataset.tab; }

for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t === tab);
    for (const p of document.querySelectorAll(".panel")) p.hidden = p.id !== tab.dataset.tab;
    refresh();
  });
}
$("#query").addEventListener("submit", (e) => { e.preventDefault(); state.nextToken = null; loadTraces(false); });
$("#range").addEventListener("change", () => refresh());
$("#more").addEventListener("click", () => loadTraces(true));
$("#close-detail").addEventListener("click", () => { $("#detail").hidden = true; state.selected = null; });
$("#refresh-map").addEventListener("click", () => loadMap());

function refresh() {
  loadInfo();
  const tab = activeTab();
  if (tab === "traces") return loadTraces(false);
  if (tab === "map") return loadMap();
  return loadRejected();
}

// New traces appear without reloading: poll while "live" is on (not while paging).
setInterval(() => {
  if (!$("#live").checked || document.hidden) return;
  if (activeTab() === "traces" && state.nextToken) { loadInfo(); return; }
  refresh();
}, 3000);
const params = new URLSearchParams(location.search);
if (params.get("filter")) $("#filter").value = params.get("filter");
refresh();
