// Shared helpers. Everything from a document reaches the page as text nodes or attribute
// values, never as HTML (the page's Content-Security-Policy forbids inline scripts as well).

export const $ = (sel, root = document) => root.querySelector(sel);
export const SVG_NS = "http://www.w3.org/2000/svg";

function fill(node, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.setAttribute("class", value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function el(tag, attrs, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

export function svg(tag, attrs, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

export class ApiError extends Error {
  constructor(type, message, status) {
    super(`${type}: ${message}`);
    this.type = type;
    this.detail = message;
    this.status = status;
  }
}

// Same-origin requests only (relative paths); POST bodies are the X-Ray API's JSON.
export async function api(path, body) {
  const response = await fetch(path, {
    method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/x-amz-json-1.1"},
    body: JSON.stringify(body || {}),
  });
  return answer(response);
}

export async function getJson(path) {
  return answer(await fetch(path, {credentials: "same-origin"}));
}

async function answer(response) {
  let data = null;
  try { data = await response.json(); } catch { data = null; }
  if (!response.ok) {
    throw new ApiError((data && data.__type) || String(response.status),
      (data && data.message) || response.statusText, response.status);
  }
  return data;
}

// --- values from documents: anything may have any shape --------------------------------------
export const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
export const objects = (v) => (Array.isArray(v) ? v.filter(isObject) : []);
export const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
export const text = (v, fallback = "") =>
  (v === null || v === undefined ? fallback : typeof v === "string" ? v : JSON.stringify(v));

// --- formatting ---------------------------------------------------------------------------------
const pad = (n, w = 2) => String(n).padStart(w, "0");

export function fmtClock(epoch, withDate) {
  if (num(epoch) === null) return "";
  const d = new Date(epoch * 1000);
  const clock = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  return withDate ? `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock}` : clock;
}

export function fmtDur(seconds) {
  if (num(seconds) === null) return "";
  if (seconds < 0.001) return `${(seconds * 1e6).toFixed(0)} µs`;
  if (seconds < 1) return `${(seconds * 1000).toFixed(1)} ms`;
  return `${seconds.toFixed(3)} s`;
}

export function pct(part, total) { return total ? `${Math.round((part / total) * 100)}%` : "0%"; }

// "Nice" tick steps (1, 2, 5 × 10^n) covering [0, span] with about ``count`` ticks.
export function ticks(span, count) {
  if (!(span > 0)) return [0];
  const raw = span / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
  const out = [];
  for (let t = 0; t <= span + step * 1e-9; t += step) out.push(t);
  return out;
}

export function badges(item) {
  const out = [];
  if (item.HasFault || item.fault === true) out.push(el("span", {class: "badge fault"}, "fault"));
  if (item.HasError || item.error === true) out.push(el("span", {class: "badge error"}, "error"));
  if (item.HasThrottle || item.throttle === true) out.push(el("span", {class: "badge throttle"}, "throttle"));
  if (item.IsPartial || item.in_progress === true) out.push(el("span", {class: "badge partial"}, "in progress"));
  if (!out.length) out.push(el("span", {class: "badge ok"}, "ok"));
  return out;
}

// Distinct colours for the services of one trace, in order of appearance (red comes last:
// faults are outlined in red).
export const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948",
  "#9c755f", "#ff9da7", "#bab0ac", "#e15759"];

// A stable colour per service name (hue from a string hash), readable on white.
export function serviceColour(name) {
  let h = 0;
  for (const ch of String(name)) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return `hsl(${(h * 137) % 360} 55% 42%)`;
}

// Rows of a long list in a scrolling box: only those in view (and a few either side) are in
// the page. Scrolling adds and removes the rows at the edges; reset() after the data changes.
export class VirtualRows {
  constructor(scroll, body, rowHeight, make, overscan = 8) {
    Object.assign(this, {scroll, body, rowHeight, make, overscan});
    this.rendered = new Map();
  }

  reset() {
    this.rendered.clear();
    this.body.replaceChildren();
  }

  draw(count) {
    const h = this.rowHeight();
    const top = this.scroll.scrollTop; // read before any write, so no layout is forced
    const height = `${count * h}px`;
    if (this.body.style.height !== height) this.body.style.height = height;
    const first = Math.max(0, Math.floor(top / h) - this.overscan);
    const last = Math.min(count, Math.ceil((top + this.scroll.clientHeight) / h) + this.overscan);
    for (const [i, node] of this.rendered) {
      if (i < first || i >= last) { node.remove(); this.rendered.delete(i); }
    }
    const lowest = this.rendered.size ? Math.min(...this.rendered.keys()) : Infinity;
    const before = [], after = [];
    for (let i = first; i < last; i++) {
      if (this.rendered.has(i)) continue;
      const node = this.make(i);
      node.style.top = `${i * h}px`;
      this.rendered.set(i, node);
      (i < lowest ? before : after).push(node);
    }
    if (before.length) this.body.prepend(...before);
    if (after.length) this.body.append(...after);
  }
}
