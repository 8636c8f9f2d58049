// One trace: a time axis, one row per segment and subsegment (virtualised: only the rows in
// view are in the page), a legend of services and a details panel for the selected row.
import {buildTrace, exceptionsOf, visibleRows} from "./model.js";
import {$, PALETTE, VirtualRows, api, badges, el, fmtClock, fmtDur, isObject, serviceColour, svg, text, ticks} from "./util.js";

const ROW_H = 24;

export class TraceView {
  constructor(onEscape) {
    this.onEscape = onEscape;
    this.scroll = $("#tl-scroll");
    this.body = $("#tl-body");
    this.timeline = $("#timeline");
    this.state = null;
    this.panel = this.scroll.closest(".panel");
    this.rows = new VirtualRows(this.scroll, this.body, () => ROW_H,
      (i) => this.row(this.state.rows[i], i), 10);
    this.scroll.addEventListener("scroll", () => this.draw());
    window.addEventListener("resize", () => this.draw());
    this.timeline.addEventListener("keydown", (e) => this.key(e));
  }

  async open(traceId) {
    if (this.state && this.state.traceId === traceId) { this.draw(); return; }
    this.state = null;
    $("#detail-title").textContent = `Trace ${traceId}`;
    $("#trace-error").hidden = true;
    this.rows.reset();
    $("#entity").replaceChildren();
    $("#legend").replaceChildren();
    let trace;
    try {
      const data = await api("/Traces", {TraceIds: [traceId]});
      trace = (data.Traces || [])[0];
    } catch (err) {
      this.fail(err.message);
      return;
    }
    if (!trace) { this.fail(`Trace ${traceId} is not in the store.`); return; }
    this.show(traceId, trace);
  }

  fail(message) {
    const box = $("#trace-error");
    box.textContent = message;
    box.hidden = false;
  }

  show(traceId, trace) {
    const model = buildTrace(trace.Segments);
    const colours = new Map(model.services.map((name, i) =>
      [name, i < PALETTE.length ? PALETTE[i] : serviceColour(name)]));
    this.state = {traceId, model, colours, collapsed: new Set(), rows: [], selected: null};
    const span = model.end - model.start;
    $("#detail-title").textContent =
      `Trace ${traceId} — ${fmtDur(span)}, ${model.nodes.length} segments and subsegments, ` +
      `started ${fmtClock(model.start, true)}`;
    $("#legend").replaceChildren(...model.services.map((name) => {
      const swatch = el("span", {class: "swatch"});
      swatch.style.background = colours.get(name);
      return el("span", {class: "legend-item"}, swatch, name);
    }));
    this.drawAxis();
    this.relayout();
    const first = model.nodes.find((n) => exceptionsOf(n.entity).length)
      || model.nodes.find((n) => n.fault || n.error || n.throttle) || model.nodes[0];
    if (first) this.select(first, false);
  }

  drawAxis() {
    const {model} = this.state;
    const span = Math.max(model.end - model.start, 1e-6);
    const marks = ticks(span, 6);
    const axis = $("#tl-axis");
    axis.replaceChildren(...marks.map((t, i) => {
      const x = `${(t / span) * 100}%`;
      const anchor = i === 0 ? "start" : t / span > 0.95 ? "end" : "middle";
      return svg("g", {class: "tick"}, svg("line", {x1: x, x2: x, y1: 14, y2: 20}),
        svg("text", {x, y: 11, "text-anchor": anchor}, fmtDur(t) || "0"));
    }));
    axis.setAttribute("aria-label", `time axis from 0 to ${fmtDur(span)}`);
  }

  relayout() {
    const s = this.state;
    s.rows = visibleRows(s.model.roots, s.collapsed);
    this.body.style.height = `${s.rows.length * ROW_H}px`;
    this.timeline.setAttribute("aria-rowcount", String(s.rows.length));
    this.rows.reset();
    this.draw();
  }

  draw() {
    if (!this.state || this.panel.hidden) return;
    this.rows.draw(this.state.rows.length);
  }

  row(item, index) {
    const s = this.state;
    const {model} = s;
    const span = Math.max(model.end - model.start, 1e-6);
    const left = item.start === null ? 0 : (item.start - model.start) / span;
    const stop = item.inProgress || item.end === null ? null : (item.end - model.start) / span;
    const width = stop === null ? 1 - left : Math.max(stop - left, 0);
    const classes = ["wf-bar", item.kind];
    if (item.inProgress) classes.push("open");
    if (item.fault) classes.push("fault");
    else if (item.throttle) classes.push("throttle");
    else if (item.error) classes.push("error");
    const bar = svg("rect", {class: classes.join(" "), x: `${left * 100}%`, y: 4, height: 14,
      width: `${width * 100}%`, fill: s.colours.get(item.service) || serviceColour(item.service), rx: 2});
    const track = svg("svg", {class: "wf-track", role: "img",
      "aria-label": `${fmtDur((item.start ?? model.start) - model.start)} after the trace start`},
    bar, item.inProgress ? svg("text", {class: "open-end", x: "100%", y: 16, "text-anchor": "end"}, "…") : null);
    const hasChildren = item.children.length > 0;
    const toggle = hasChildren
      ? el("button", {class: s.collapsed.has(item) ? "toggle collapsed" : "toggle", tabindex: "-1",
        "aria-label": s.collapsed.has(item) ? "expand" : "collapse",
        onclick: (e) => { e.stopPropagation(); this.toggle(item); }})
      : el("span", {class: "toggle"});
    const marks = item.fault || item.error || item.throttle ? badges(item) : [];
    const name = el("div", {class: "wf-name", role: "gridcell", title: item.name},
      toggle, item.name,
      el("span", {class: "kind"}, item.kind === "segment" ? text(item.entity.origin, "segment") : text(item.entity.namespace)),
      " ", marks);
    name.style.paddingLeft = `${item.depth * 14}px`;
    const dur = item.inProgress ? "in progress" : fmtDur(item.end - (item.start ?? item.end));
    const row = el("div", {class: item === s.selected ? "wf-row selected" : "wf-row", role: "row",
      "aria-rowindex": index + 1, "aria-level": item.depth + 1, "aria-selected": String(item === s.selected),
      "aria-expanded": hasChildren ? String(!s.collapsed.has(item)) : null,
      "data-id": item.id, "data-depth": item.depth, "data-service": item.service,
      onclick: () => this.select(item, true)},
    name, el("div", {role: "gridcell"}, track), el("div", {class: "wf-dur", role: "gridcell"}, dur));
    return row;
  }

  toggle(item) {
    const s = this.state;
    if (!item.children.length) return;
    if (s.collapsed.has(item)) s.collapsed.delete(item); else s.collapsed.add(item);
    this.relayout();
  }

  select(item, focus) {
    const s = this.state;
    s.selected = item;
    showEntity(item);
    const index = s.rows.indexOf(item);
    if (index >= 0) {
      const top = index * ROW_H;
      if (top < this.scroll.scrollTop) this.scroll.scrollTop = top;
      else if (top + ROW_H > this.scroll.scrollTop + this.scroll.clientHeight) {
        this.scroll.scrollTop = top + ROW_H - this.scroll.clientHeight;
      }
    }
    this.draw();
    for (const [i, row] of this.rows.rendered) {
      const on = s.rows[i] === item;
      row.classList.toggle("selected", on);
      row.setAttribute("aria-selected", String(on));
    }
    if (focus) this.timeline.focus({preventScroll: true});
  }

  key(event) {
    const s = this.state;
    if (!s) return;
    const index = Math.max(0, s.rows.indexOf(s.selected));
    const go = (i) => { event.preventDefault(); this.select(s.rows[Math.max(0, Math.min(s.rows.length - 1, i))], true); };
    const page = Math.max(1, Math.floor(this.scroll.clientHeight / ROW_H) - 1);
    switch (event.key) {
      case "ArrowDown": return go(index + 1);
      case "ArrowUp": return go(index - 1);
      case "PageDown": return go(index + page);
      case "PageUp": return go(index - page);
      case "Home": return go(0);
      case "End": return go(s.rows.length - 1);
      case "ArrowLeft":
        event.preventDefault();
        if (s.selected && s.selected.children.length && !s.collapsed.has(s.selected)) this.toggle(s.selected);
        else if (s.selected && s.selected.parent) this.select(s.selected.parent, true);
        return undefined;
      case "ArrowRight":
        event.preventDefault();
        if (s.selected && s.collapsed.has(s.selected)) this.toggle(s.selected);
        return undefined;
      case "Enter":
        event.preventDefault();
        if (s.selected && s.selected.children.length) this.toggle(s.selected);
        else $("#entity").focus();
        return undefined;
      case "Escape":
        event.preventDefault();
        return this.onEscape();
      default:
        return undefined;
    }
  }
}

// --- details panel ----------------------------------------------------------------------------
function part(title, open, ...content) {
  return el("details", {open: open ? "" : null}, el("summary", {}, title), ...content);
}

function json(value) {
  return el("pre", {}, JSON.stringify(value, null, 2));
}

function present(value) {
  return value !== undefined && value !== null && !(isObject(value) && !Object.keys(value).length);
}

export function showEntity(item) {
  const box = $("#entity");
  const e = item.entity;
  const overview = el("dl", {class: "overview"},
    el("dt", {}, "Name"), el("dd", {}, item.name),
    el("dt", {}, "Kind"), el("dd", {}, item.kind, item.entity.namespace ? ` (${text(item.entity.namespace)})` : ""),
    el("dt", {}, "Service"), el("dd", {}, item.service),
    el("dt", {}, "Id"), el("dd", {class: "mono"}, item.id),
    e.parent_id !== undefined ? [el("dt", {}, "Parent"), el("dd", {class: "mono"}, text(e.parent_id))] : null,
    e.origin !== undefined ? [el("dt", {}, "Origin"), el("dd", {}, text(e.origin))] : null,
    el("dt", {}, "Started"), el("dd", {}, fmtClock(item.start, true)),
    el("dt", {}, "Duration"), el("dd", {}, item.inProgress ? "in progress" : fmtDur(item.end - item.start)),
    el("dt", {}, "Status"), el("dd", {}, badges(e)));
  const sections = [el("h3", {}, `${item.kind} ${item.name}`), part("Overview", true, overview)];
  if (isObject(e.annotations) && Object.keys(e.annotations).length) {
    sections.push(part("Annotations", true, el("table", {class: "kv"}, el("tbody", {},
      Object.entries(e.annotations).map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {class: "mono"}, text(v))))))));
  }
  const exceptions = exceptionsOf(e);
  if (exceptions.length || typeof e.cause === "string") {
    sections.push(part("Exceptions", true,
      typeof e.cause === "string" ? el("p", {}, `Exception ${e.cause} (recorded in another segment)`) : null,
      exceptions.map((ex) => el("div", {class: "exception"},
        el("div", {}, el("b", {}, ex.type), ": ", ex.message, ex.remote ? " (remote)" : ""),
        ex.stack.map((f) => el("div", {class: "stack"}, `  at ${f.label} (${f.path}:${f.line})`))))));
  }
  for (const [title, key] of [["HTTP", "http"], ["SQL", "sql"], ["AWS", "aws"], ["Metadata", "metadata"],
    ["Service", "service"], ["User", "user"]]) {
    if (present(e[key])) sections.push(part(title, key !== "metadata", json(e[key])));
  }
  sections.push(part("Raw document", false, json(e)));
  box.replaceChildren(...sections);
}
