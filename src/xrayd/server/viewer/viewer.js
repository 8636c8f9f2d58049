// The viewer's routes (in the URL's hash, so a reload or a shared link opens the same view,
// and back/forward move between views):
//   #/traces?filter=…&range=3600[&start=…&end=…][&sort=key:dir]   the trace list
//   #/trace/<id>                                                   one trace
//   #/map?range=3600                                               the service map
//   #/service/<name>?range=3600                                    the map, one service selected
//   #/rejected                                                     rejected documents
import {$, el, fmtClock, getJson, isObject, num, objects, text} from "./util.js";
import {TraceList, withRange} from "./list.js";
import {TraceView} from "./trace.js";
import {ServiceMap} from "./map.js";

const DEFAULT_RANGE = 3600;
const RANGES = [[300, "Last 5 minutes"], [900, "Last 15 minutes"], [3600, "Last hour"], [21600, "Last 6 hours"],
  [86400, "Last 24 hours"], [259200, "Last 3 days"], [2592000, "Last 30 days"]];

export function parseRoute(hash) {
  const raw = hash.replace(/^#/, "") || "/traces";
  const [path, query = ""] = raw.split("?", 2);
  const params = new URLSearchParams(query);
  const parts = path.split("/").filter(Boolean).map((p) => {
    try { return decodeURIComponent(p); } catch { return p; }
  });
  const view = ["traces", "trace", "map", "service", "rejected"].includes(parts[0]) ? parts[0] : "traces";
  return {view, arg: parts[1] || "", params};
}

function timeWindow(params) {
  const start = Number(params.get("start")), end = Number(params.get("end"));
  if (params.has("start") && params.has("end") && Number.isFinite(start) && Number.isFinite(end) && end >= start) {
    return {start, end, relative: 0, key: `${start}-${end}`, spansDays: end - start > 86400};
  }
  const range = Number(params.get("range")) || DEFAULT_RANGE;
  const end_ = Date.now() / 1000 + 60;
  return {start: end_ - 60 - range, end: end_, relative: range, key: `last-${range}`, spansDays: range > 86400};
}

function fillRanges(select, params) {
  const options = RANGES.map(([value, label]) => el("option", {value}, label));
  const w = timeWindow(params);
  if (!w.relative) {
    options.push(el("option", {value: "custom"}, `${fmtClock(w.start, true)} – ${fmtClock(w.end, true)}`));
  }
  select.replaceChildren(...options);
  select.value = w.relative ? String(w.relative) : "custom";
  if (select.value === "") select.append(el("option", {value: String(w.relative)}, `Last ${w.relative} s`));
  select.value = w.relative ? String(w.relative) : "custom";
}

class App {
  constructor() {
    this.route = null;
    this.listScroll = 0;
    this.list = new TraceList((id) => this.go(`#/trace/${encodeURIComponent(id)}`));
    this.list.onSortChange = (sort) => this.go(this.listHash({sort}));
    this.list.onRange = (low, high) => {
      $("#filter").value = withRange($("#filter").value.trim(), low, high);
      this.go(this.listHash({filter: $("#filter").value}));
    };
    this.trace = new TraceView(() => history.length > 1 && this.cameFromList ? history.back() : this.go(this.lastList || "#/traces"));
    this.map = new ServiceMap(
      (name) => this.go(`#/service/${encodeURIComponent(name)}?${this.mapParams()}`),
      (filter) => this.go(`#/traces?${new URLSearchParams({filter, ...this.rangeParams($("#map-range"))})}`));
    $("#query").addEventListener("submit", (e) => { e.preventDefault(); this.go(this.listHash({filter: $("#filter").value.trim()}), true); });
    $("#range").addEventListener("change", () => this.go(this.listHash({})));
    $("#more").addEventListener("click", () => this.list.more());
    $("#map-range").addEventListener("change", () => this.go(`#/map?${this.mapParams()}`));
    $("#refresh-map").addEventListener("click", () => this.render(true));
    $("#back").addEventListener("click", () => this.trace.onEscape());
    window.addEventListener("hashchange", () => this.render(false));
    setInterval(() => this.tick(), 3000);
  }

  rangeParams(select) {
    if (select.value !== "custom") return {range: select.value};
    const params = this.route ? this.route.params : new URLSearchParams();
    return {start: params.get("start"), end: params.get("end")};
  }

  mapParams() { return new URLSearchParams(this.rangeParams($("#map-range"))).toString(); }

  listHash(change) {
    const current = this.route && this.route.view === "traces" ? this.route.params : new URLSearchParams();
    const params = new URLSearchParams();
    const filter = change.filter ?? $("#filter").value.trim();
    if (filter) params.set("filter", filter);
    for (const [k, v] of Object.entries(this.rangeParams($("#range")))) if (v) params.set(k, v);
    const sort = change.sort ?? current.get("sort");
    if (sort) params.set("sort", sort);
    return `#/traces?${params}`;
  }

  go(hash, force) {
    if (location.hash === hash) { if (force) this.render(true); return; }
    location.hash = hash;
  }

  async render(force) {
    const previous = this.route;
    // Read once on leaving the list (reading it on every scroll would force a layout).
    if (previous && previous.view === "traces" && !$("#traces").hidden) this.listScroll = $("#list-scroll").scrollTop;
    const route = parseRoute(location.hash);
    this.route = route;
    for (const tab of document.querySelectorAll(".tab")) {
      const on = tab.dataset.tab === (route.view === "service" ? "map" : route.view === "trace" ? "traces" : route.view);
      tab.classList.toggle("active", on);
      if (on) tab.setAttribute("aria-current", "page"); else tab.removeAttribute("aria-current");
    }
    const panel = {traces: "traces", trace: "trace-view", map: "map", service: "map", rejected: "rejected"}[route.view];
    for (const p of document.querySelectorAll(".panel")) p.hidden = p.id !== panel;
    this.loadInfo();
    if (route.view === "traces") {
      this.lastList = location.hash || "#/traces";
      $("#filter").value = route.params.get("filter") || "";
      fillRanges($("#range"), route.params);
      document.title = "xrayd · traces";
      const w = timeWindow(route.params);
      if (force) this.list.query = null;
      this.list.setSort(route.params.get("sort"));
      await this.list.show({filter: route.params.get("filter") || "", ...w}, this.listScroll);
    } else if (route.view === "trace") {
      this.cameFromList = Boolean(previous && previous.view === "traces");
      document.title = `xrayd · trace ${route.arg}`;
      await this.trace.open(route.arg);
      $("#timeline").focus({preventScroll: true});
    } else if (route.view === "map" || route.view === "service") {
      fillRanges($("#map-range"), route.params);
      document.title = route.view === "service" ? `xrayd · ${route.arg}` : "xrayd · service map";
      // Coming from another view reads the graph again; moving within the map does not.
      const within = previous && (previous.view === "map" || previous.view === "service");
      await this.map.show(timeWindow(route.params), route.view === "service" ? route.arg : null, force || !within);
    } else {
      document.title = "xrayd · rejected";
      await loadRejected();
    }
  }

  tick() {
    if (!$("#live").checked || document.hidden || !this.route) return;
    this.loadInfo();
    if (this.route.view === "traces") this.list.live();
  }

  async loadInfo() {
    try {
      const info = await getJson("/api/stats");
      $("#store-info").textContent = `${info.traces} traces · ${info.segments} documents · store ${text(info.store)}`;
      const byCode = info.rejected_by_code && typeof info.rejected_by_code === "object"
        ? Object.entries(info.rejected_by_code).map(([code, n]) => `${code}: ${n}`).join(", ") : "";
      $("#rejected-count").textContent = info.rejected ? `(${info.rejected})` : "";
      $("#tab-rejected").title = byCode ? `Rejected documents by reason: ${byCode}` : "No rejected documents";
      showIntake(info.intake);
    } catch { /* the daemon may be restarting */ }
  }
}

// Control characters shown as escapes, the rest as text, at most 300 characters.
export function preview(doc) {
  const value = text(doc);
  // eslint-disable-next-line no-control-regex
  const safe = value.slice(0, 300).replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
  return value.length > 300 ? `${safe}… (${value.length} characters)` : safe;
}

// Segment documents taken in per intake (X-Ray datagrams, each OTLP receiver), and what each
// rejected (datagrams, requests or spans).
function showIntake(intake) {
  const box = $("#intake-counts");
  if (!isObject(intake)) { box.replaceChildren(); return; }
  box.replaceChildren(...Object.entries(intake).filter(([, c]) => isObject(c)).map(([source, c]) => {
    const rejected = num(c.rejected) ?? 0;
    return el("span", {class: rejected ? "intake has-rejected" : "intake", "data-intake": source,
      title: `${source}: ${num(c.accepted) ?? 0} segment documents taken in, ${rejected} rejected`},
    `${source} ${num(c.accepted) ?? 0}`, rejected ? el("a", {href: "#/rejected"}, ` (${rejected} rejected)`) : null);
  }));
}

async function loadRejected() {
  let data;
  try { data = await getJson("/api/rejected"); } catch (err) {
    $("#rejected-list tbody").replaceChildren(el("tr", {}, el("td", {colspan: 5}, err.message)));
    return;
  }
  const rows = objects(data.Rejected);
  const counts = {};
  for (const r of rows) {
    const key = `${text(r.Intake, "?")}: ${text(r.ErrorCode)}`;
    counts[key] = (counts[key] || 0) + 1;
  }
  $("#rejected-summary").textContent = rows.length
    ? `Latest ${rows.length}: ` + Object.entries(counts).map(([c, n]) => `${n} × ${c}`).join(", ")
    : "Nothing rejected.";
  $("#rejected-list tbody").replaceChildren(...rows.map((r) => el("tr", {"data-intake": text(r.Intake, "")},
    el("td", {}, fmtClock(r.Received, true)), el("td", {}, text(r.Intake, "")), el("td", {}, text(r.ErrorCode)),
    el("td", {}, text(r.Reason)), el("td", {class: "mono preview"}, preview(r.Document)))));
}

// Old links (?filter=…) become routes.
const legacy = new URLSearchParams(location.search).get("filter");
if (legacy && !location.hash) history.replaceState(null, "", `/#/traces?${new URLSearchParams({filter: legacy})}`);
new App().render(false);
