// The trace list: a virtualised table (only the rows in view are in the page), sortable
// columns, a response-time distribution chart, paging and live updates that keep what is loaded.
import {$, ApiError, VirtualRows, api, badges, el, fmtClock, fmtDur, getJson, svg, text, ticks} from "./util.js";

const NARROW = window.matchMedia("(max-width: 999px)");
const RANGE_CLAUSE = /\s*(?:AND\s+)?responsetime >= [\d.]+ AND responsetime <= [\d.]+\s*$/;

// Columns the daemon sorts the whole query by (/api/sorted); the others sort the loaded rows.
const SERVER_SORTED = new Set(["start", "duration", "response"]);

const COLUMNS = [
  {key: "start", title: "Started", value: (s) => s.StartTime},
  {key: "id", title: "Trace", value: (s) => s.Id},
  {key: "entry", title: "Entry point", value: (s) => (s.EntryPoint ? s.EntryPoint.Name : "")},
  {key: "duration", title: "Duration", value: (s) => s.Duration},
  {key: "response", title: "Response", value: (s) => s.ResponseTime},
  {key: "http", title: "HTTP", value: (s) => (s.Http && s.Http.HttpStatus) || 0},
  {key: "status", title: "Status", value: (s) => (s.HasFault ? 3 : s.HasError ? 2 : s.HasThrottle ? 1 : 0)},
  {key: "annotations", title: "Annotations", value: (s) => annotationText(s.Annotations)},
];

function annotationText(annotations) {
  if (!annotations || typeof annotations !== "object") return "";
  return Object.entries(annotations).map(([key, values]) => {
    const v = (Array.isArray(values) && values[0] && values[0].AnnotationValue) || {};
    const value = "StringValue" in v ? JSON.stringify(v.StringValue)
      : "NumberValue" in v ? v.NumberValue : v.BooleanValue;
    return `${key}=${value}`;
  }).join(" ");
}

export function withRange(filter, low, high) {
  const rest = filter.replace(RANGE_CLAUSE, "").trim();
  const clause = `responsetime >= ${low} AND responsetime <= ${high}`;
  return rest ? `${rest} AND ${clause}` : clause;
}

export class TraceList {
  constructor(openTrace) {
    this.openTrace = openTrace;
    this.scroll = $("#list-scroll");
    this.table = $("#trace-list");
    this.body = $("#trace-list tbody");
    this.items = [];
    this.known = new Set();
    this.query = null; // {filter, start, end, key}
    this.nextToken = null;
    this.sort = null; // {key, dir}
    this.busy = false;
    this.generation = 0;
    this.withDate = false;
    this.panel = this.scroll.closest(".panel");
    this.rows = new VirtualRows(this.scroll, this.body, () => this.rowHeight(),
      (i) => this.row(this.items[i], i));
    this.scroll.addEventListener("scroll", () => {
      this.draw();
      const end = this.items.length * this.rowHeight();
      if (this.nextToken && this.scroll.scrollTop + this.scroll.clientHeight > end - 4 * this.rowHeight()) {
        this.more();
      }
    });
    window.addEventListener("resize", () => { this.draw(); this.redrawChart(); });
    NARROW.addEventListener("change", () => this.redraw());
    this.body.addEventListener("keydown", (e) => this.key(e));
    this.drawHead();
  }

  rowHeight() { return NARROW.matches ? 46 : 26; }

  drawHead() {
    const row = $("#trace-list thead tr");
    row.replaceChildren(...COLUMNS.map((c) => {
      const sorted = this.sort && this.sort.key === c.key;
      return el("th", {role: "columnheader", class: `col-${c.key}`,
        "aria-sort": sorted ? (this.sort.dir > 0 ? "ascending" : "descending") : "none"},
      el("button", {class: "sort", "data-sort": c.key, onclick: () => this.onSort(c.key)},
        c.title, sorted ? (this.sort.dir > 0 ? " ▲" : " ▼") : ""));
    }));
  }

  onSort(key) {
    const dir = this.sort && this.sort.key === key ? -this.sort.dir : key === "start" ? -1 : 1;
    this.onSortChange(`${key}:${dir > 0 ? "asc" : "desc"}`);
  }

  onSortChange() { /* set by the app: writes the sort into the URL */ }

  setSort(value) {
    const [key, dir] = String(value || "").split(":");
    this.sort = COLUMNS.some((c) => c.key === key) ? {key, dir: dir === "asc" ? 1 : -1} : null;
    this.drawHead();
    this.applySort();
    this.redraw();
  }

  // "key:asc" when the whole query is read in this column's order, else null.
  serverSort() {
    return this.sort && SERVER_SORTED.has(this.sort.key) ? `${this.sort.key}:${this.sort.dir > 0 ? "asc" : "desc"}` : null;
  }

  applySort() {
    if (!this.sort) return;
    const column = COLUMNS.find((c) => c.key === this.sort.key);
    const dir = this.sort.dir;
    this.items.sort((a, b) => {
      const x = column.value(a), y = column.value(b);
      return (x < y ? -1 : x > y ? 1 : 0) * dir;
    });
  }

  // Shows the list for a query; a query already shown keeps its rows and scroll position.
  async show(query, scrollTop) {
    const key = `${query.filter}|${query.key}|${this.serverSort() || ""}`;
    if (this.query && this.query.key === key) {
      this.draw();
      if (scrollTop !== undefined) this.scroll.scrollTop = scrollTop;
      return;
    }
    this.query = {...query, key};
    this.generation++;
    this.items = [];
    this.known = new Set();
    this.nextToken = null;
    this.scroll.scrollTop = 0;
    this.withDate = query.spansDays;
    await Promise.all([this.page(false), this.chart()]);
  }

  request(token, start, end) {
    const body = {StartTime: start ?? this.query.start, EndTime: end ?? this.query.end};
    if (this.query.filter) body.FilterExpression = this.query.filter;
    if (token) body.NextToken = token;
    return body;
  }

  async page(append) {
    if (this.busy && append) return;
    this.busy = true;
    const generation = this.generation;
    try {
      const order = this.serverSort();
      const data = order ? await getJson(`/api/sorted?${new URLSearchParams({
        start: this.query.start, end: this.query.end, filter: this.query.filter || "", sort: order,
        offset: append ? this.nextToken : 0})}`)
        : await api("/TraceSummaries", this.request(append ? this.nextToken : null));
      if (generation !== this.generation) return;
      this.clearError();
      this.add(data.TraceSummaries || [], false);
      // A NextToken, or the offset of the next sorted page (never 0).
      this.nextToken = (order ? data.NextOffset : data.NextToken) || null;
      this.processed = data.TracesProcessedCount;
      this.summary();
    } catch (err) {
      if (generation !== this.generation) return;
      this.error(err);
    } finally {
      this.busy = false;
    }
  }

  more() { if (this.nextToken) this.page(true); }

  // New traces from the first page of the same query go on top; the rows the user is looking
  // at stay where they are on the screen.
  async live() {
    if (!this.query || this.busy) return;
    const generation = this.generation;
    const now = Date.now() / 1000;
    const end = this.query.relative ? now + 60 : this.query.end;
    const start = this.query.relative ? end - 60 - this.query.relative : this.query.start;
    let data;
    try { data = await api("/TraceSummaries", this.request(null, start, end)); } catch { return; }
    if (generation !== this.generation) return;
    const byId = new Map(this.items.map((s) => [s.Id, s]));
    const fresh = [];
    let changed = false;
    for (const s of data.TraceSummaries || []) {
      const known = byId.get(s.Id);
      if (!known) fresh.push(s);
      else if (JSON.stringify(known) !== JSON.stringify(s)) { Object.assign(known, s); changed = true; }
    }
    this.processed = data.TracesProcessedCount;
    if (fresh.length) this.add(fresh, true);
    else if (changed) this.redraw();
    this.summary();
    if (fresh.length) this.chart();
  }

  add(summaries, onTop) {
    const fresh = summaries.filter((s) => s && typeof s.Id === "string" && !this.known.has(s.Id));
    for (const s of fresh) this.known.add(s.Id);
    const before = this.scroll.scrollTop;
    this.items = onTop ? [...fresh, ...this.items] : [...this.items, ...fresh];
    this.applySort();
    if (!this.withDate && this.items.length) {
      const days = new Set(this.items.map((s) => new Date(s.StartTime * 1000).toDateString()));
      this.withDate = days.size > 1;
    }
    this.layout();
    if (onTop && before > 0 && !this.sort) this.scroll.scrollTop = before + fresh.length * this.rowHeight();
  }

  layout() {
    this.table.classList.toggle("dates", this.withDate);
    this.table.setAttribute("aria-rowcount", String(this.items.length + 1));
    this.redraw();
  }

  // The rows changed (added, sorted, updated): draw them all again, keeping the focused one.
  redraw() {
    const focused = document.activeElement && document.activeElement.closest && document.activeElement.closest("#trace-list tbody tr");
    const focusId = focused ? focused.dataset.trace : null;
    this.rows.reset();
    this.draw();
    if (focusId) {
      const again = this.body.querySelector(`tr[data-trace="${CSS.escape(focusId)}"]`);
      if (again) again.focus({preventScroll: true});
    }
  }

  draw() {
    if (this.panel.hidden) return;
    this.rows.draw(this.items.length);
  }

  row(s, index) {
    const http = s.Http || {};
    const httpText = [http.HttpMethod, http.HttpStatus, http.HttpURL].filter((x) => x !== undefined).join(" ");
    const notes = annotationText(s.Annotations);
    const row = el("tr", {role: "row", "aria-rowindex": index + 2, "data-trace": s.Id, tabindex: "0",
      onclick: () => this.openTrace(s.Id)},
    el("td", {role: "cell", class: "col-start"}, fmtClock(s.StartTime, this.withDate)),
    el("td", {role: "cell", class: "col-id mono"}, s.Id),
    el("td", {role: "cell", class: "col-entry"}, s.EntryPoint ? text(s.EntryPoint.Name) : ""),
    el("td", {role: "cell", class: "col-duration"}, fmtDur(s.Duration)),
    el("td", {role: "cell", class: "col-response"}, fmtDur(s.ResponseTime)),
    el("td", {role: "cell", class: "col-http mono", title: httpText}, httpText),
    el("td", {role: "cell", class: "col-status"}, badges(s)),
    el("td", {role: "cell", class: "col-annotations mono", title: notes}, notes));
    return row;
  }

  key(event) {
    const row = event.target.closest("tr");
    if (!row) return;
    const index = Number(row.getAttribute("aria-rowindex")) - 2;
    const move = (i) => {
      event.preventDefault();
      const target = Math.max(0, Math.min(this.items.length - 1, i));
      const h = this.rowHeight();
      if (target * h < this.scroll.scrollTop) this.scroll.scrollTop = target * h;
      else if ((target + 1) * h > this.scroll.scrollTop + this.scroll.clientHeight - 30) {
        this.scroll.scrollTop = (target + 1) * h - this.scroll.clientHeight + 30;
      }
      this.draw();
      const next = this.body.querySelector(`tr[aria-rowindex="${target + 2}"]`);
      if (next) next.focus({preventScroll: true});
    };
    if (event.key === "ArrowDown") move(index + 1);
    else if (event.key === "ArrowUp") move(index - 1);
    else if (event.key === "Enter") { event.preventDefault(); this.openTrace(row.dataset.trace); }
  }

  summary() {
    const shown = this.items.length;
    $("#summary-line").textContent = `${shown} traces loaded of ${this.processed ?? "?"} in the time range` +
      (this.query.filter ? " (filtered)" : "") + (this.nextToken ? " — scroll or press “Load more” for the next page" : "") +
      // Columns the daemon cannot sort by order the pages loaded so far.
      (this.sort && !this.serverSort() && this.nextToken ? "; sorted within the loaded traces" : "");
    $("#more").hidden = !this.nextToken;
  }

  clearError() { $("#query-error").hidden = true; $("#query-error").replaceChildren(); }

  // An invalid filter: no stale rows under the error, and the position the server names marked.
  error(err) {
    this.items = [];
    this.known = new Set();
    this.nextToken = null;
    this.layout();
    $("#more").hidden = true;
    $("#summary-line").textContent = "";
    $("#dist-chart").replaceChildren();
    const box = $("#query-error");
    const message = err instanceof ApiError ? err.detail : err.message;
    const at = /position (\d+)/.exec(message || "");
    const parts = [el("div", {}, err instanceof ApiError ? `${err.type}: ${message}` : message)];
    if (at && this.query.filter) {
      const pos = Math.min(Number(at[1]), this.query.filter.length);
      parts.push(el("pre", {class: "caret"}, this.query.filter, "\n", " ".repeat(pos), "^"));
    }
    box.replaceChildren(...parts);
    box.hidden = false;
  }

  // --- response-time distribution -------------------------------------------------------------
  async chart() {
    const q = this.query;
    const params = new URLSearchParams({start: q.start, end: q.end, filter: q.filter.replace(RANGE_CLAUSE, "")});
    let data;
    try { data = await getJson(`/api/distribution?${params}`); } catch { return; }
    if (q !== this.query) return;
    this.chartData = data;
    this.redrawChart();
  }

  redrawChart() {
    if (!this.chartData || !this.query || $("#dist-chart").clientWidth === 0) return;
    drawChart(this.chartData, this.query.filter, (low, high) => this.onRange(low, high));
  }

  onRange() { /* set by the app: a dragged range becomes part of the filter */ }
}

function drawChart(data, filter, onRange) {
  const chart = $("#dist-chart");
  const W = chart.clientWidth || 800, H = 110, padL = 40, padB = 22, padT = 18;
  chart.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const bins = Array.isArray(data.bins) ? data.bins : [];
  const top = Math.max(1, ...bins.map((b) => b.count));
  const maxValue = bins.length ? bins[bins.length - 1].to : 0;
  const plotW = W - padL - 10, plotH = H - padB - padT;
  const xOf = (v) => padL + (maxValue ? (v / maxValue) * plotW : 0);
  const parts = [];
  parts.push(svg("line", {class: "axis", x1: padL, x2: W - 10, y1: H - padB, y2: H - padB}));
  for (const t of ticks(maxValue, Math.max(2, Math.floor(plotW / 90)))) {
    const anchor = xOf(t) > W - 40 ? "end" : "middle";
    parts.push(svg("text", {class: "tick-label", x: xOf(t), y: H - 6, "text-anchor": anchor}, fmtDur(t) || "0"));
  }
  parts.push(svg("text", {class: "tick-label", x: padL - 4, y: padT + 4, "text-anchor": "end"}, String(top)));
  parts.push(svg("text", {class: "tick-label", x: padL - 4, y: H - padB, "text-anchor": "end"}, "0"));
  for (const b of bins) {
    if (!(b.count > 0)) continue;
    const h = (b.count / top) * plotH;
    parts.push(svg("rect", {class: "dist-bar", x: xOf(b.from) + 0.5, width: Math.max(1, xOf(b.to) - xOf(b.from) - 1),
      y: H - padB - h, height: h}, svg("title", {}, `${b.count} traces with response time ${fmtDur(b.from)}–${fmtDur(b.to)}`)));
  }
  const m = RANGE_CLAUSE.exec(filter);
  const range = m && /responsetime >= ([\d.]+) AND responsetime <= ([\d.]+)/.exec(m[0]);
  const band = svg("rect", {class: "dist-select", y: padT, height: plotH, x: 0, width: 0});
  if (range && maxValue) {
    band.setAttribute("x", xOf(Number(range[1])));
    band.setAttribute("width", Math.max(1, xOf(Math.min(Number(range[2]), maxValue)) - xOf(Number(range[1]))));
  }
  parts.push(band);
  parts.push(svg("text", {class: "chart-label", x: W - 10, y: 12, "text-anchor": "end"},
    `response time of ${data.total ?? 0} traces${data.total ? " — drag to narrow" : ""}`));
  chart.replaceChildren(...parts);
  chart.setAttribute("aria-label", `Response time distribution of ${data.total ?? 0} traces`);
  if (!maxValue) { chart.onpointerdown = null; chart.onkeydown = null; return; }
  // Keyboard: arrows pick a bucket, Shift+arrows widen the pick, Enter narrows the list to it.
  let pick = null;
  const showPick = () => {
    band.setAttribute("x", xOf(bins[pick.lo].from));
    band.setAttribute("width", xOf(bins[pick.hi].to) - xOf(bins[pick.lo].from));
    chart.setAttribute("aria-label", `Response time ${fmtDur(bins[pick.lo].from)} to ${fmtDur(bins[pick.hi].to)}: ` +
      `${bins.slice(pick.lo, pick.hi + 1).reduce((n, b) => n + b.count, 0)} traces; Enter narrows the list`);
  };
  chart.onkeydown = (e) => {
    const last = bins.length - 1;
    if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
      e.preventDefault();
      const step = e.key === "ArrowRight" ? 1 : -1;
      if (!pick) pick = {lo: 0, hi: 0};
      else if (e.shiftKey && step > 0) pick.hi = Math.min(last, pick.hi + 1);
      else if (e.shiftKey) pick.lo = Math.max(0, pick.lo - 1);
      else { const i = Math.max(0, Math.min(last, (step > 0 ? pick.hi : pick.lo) + step)); pick = {lo: i, hi: i}; }
      showPick();
    } else if (e.key === "Enter" && pick) {
      e.preventDefault();
      onRange(round(bins[pick.lo].from, false), round(bins[pick.hi].to, true));
    }
  };
  const valueAt = (clientX) => {
    const box = chart.getBoundingClientRect();
    const x = ((clientX - box.left) / box.width) * W;
    return Math.max(0, Math.min(maxValue, ((x - padL) / plotW) * maxValue));
  };
  chart.onpointerdown = (down) => {
    down.preventDefault();
    chart.setPointerCapture(down.pointerId);
    const from = valueAt(down.clientX);
    const move = (e) => {
      const to = valueAt(e.clientX);
      band.setAttribute("x", xOf(Math.min(from, to)));
      band.setAttribute("width", Math.abs(xOf(to) - xOf(from)));
    };
    const up = (e) => {
      chart.removeEventListener("pointermove", move);
      chart.removeEventListener("pointerup", up);
      const to = valueAt(e.clientX);
      const low = Math.min(from, to), high = Math.max(from, to);
      if (xOf(high) - xOf(low) < 3) return;
      onRange(round(low, false), round(high, true));
    };
    chart.addEventListener("pointermove", move);
    chart.addEventListener("pointerup", up);
  };
}

// Filter bounds with 4 significant digits, rounded outwards so the dragged bars stay in.
function round(value, up) {
  if (!(value >= 1e-6)) return 0;
  const scale = 10 ** (3 - Math.floor(Math.log10(value)));
  return (up ? Math.ceil(value * scale) : Math.floor(value * scale)) / scale;
}
