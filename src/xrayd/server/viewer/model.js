// A trace's documents as one tree: each segment and subsegment is a node; a segment whose
// parent_id names a subsegment of another document (the call that reached this service) is
// nested under it. Documents may have any shape the store accepted: fields of the wrong type
// are ignored, never thrown on.
import {isObject, num, objects, text} from "./util.js";

const MAX_DEPTH = 256;

function node(entity, kind, service, depth) {
  const start = num(entity.start_time);
  const end = num(entity.end_time);
  const item = {
    entity, kind, service,
    id: typeof entity.id === "string" ? entity.id : "",
    name: text(entity.name, "(unnamed)"),
    start, end,
    inProgress: entity.in_progress === true || (start !== null && end === null),
    fault: entity.fault === true, error: entity.error === true, throttle: entity.throttle === true,
    children: [], parent: null,
  };
  if (depth < MAX_DEPTH) {
    for (const sub of objects(entity.subsegments)) {
      const child = node(sub, "subsegment", service, depth + 1);
      child.parent = item;
      item.children.push(child);
    }
  }
  return item;
}

function register(item, byId) {
  const stack = [item];
  while (stack.length) {
    const current = stack.pop();
    if (current.id && !byId.has(current.id)) byId.set(current.id, current);
    stack.push(...current.children);
  }
}

function isAncestor(candidate, item) {
  for (let p = candidate; p; p = p.parent) if (p === item) return true;
  return false;
}

function byStart(a, b) {
  return (a.start ?? Infinity) - (b.start ?? Infinity);
}

// The documents of a BatchGetTraces trace (``Segments[].Document`` strings) as a tree.
export function buildTrace(segments) {
  const docs = [];
  for (const segment of Array.isArray(segments) ? segments : []) {
    let doc = null;
    try { doc = JSON.parse(segment && segment.Document); } catch { doc = null; }
    if (isObject(doc)) docs.push(doc);
  }
  const tops = docs.map((doc) => {
    const kind = doc.type === "subsegment" ? "subsegment" : "segment";
    return node(doc, kind, text(doc.name, "(unnamed)"), 0);
  });
  const byId = new Map();
  for (const top of tops) register(top, byId);
  const roots = [];
  for (const top of tops) {
    const parentId = top.entity.parent_id;
    const parent = typeof parentId === "string" ? byId.get(parentId) : undefined;
    if (parent && parent !== top && !isAncestor(parent, top)) {
      top.parent = parent;
      parent.children.push(top);
      if (top.kind === "subsegment") top.service = parent.service;
    } else {
      roots.push(top);
    }
  }
  // A standalone subsegment inherits its service from where it was attached.
  const all = [];
  const stack = roots.map((r) => [r, 0]);
  while (stack.length) {
    const [item, depth] = stack.pop();
    item.depth = depth;
    if (item.kind === "subsegment" && item.parent) item.service = item.parent.service;
    all.push(item);
    item.children.sort(byStart);
    for (let i = item.children.length - 1; i >= 0; i--) stack.push([item.children[i], depth + 1]);
  }
  roots.sort(byStart);
  const starts = all.map((n) => n.start).filter((v) => v !== null);
  const ends = all.flatMap((n) => [n.end, n.start]).filter((v) => v !== null);
  const start = starts.length ? Math.min(...starts) : 0;
  const end = ends.length ? Math.max(...ends) : start;
  const services = [...new Set(all.filter((n) => n.kind === "segment").map((n) => n.service))];
  return {roots, nodes: all, start, end, services};
}

// The rows to show: depth-first, skipping the descendants of collapsed nodes.
export function visibleRows(roots, collapsed) {
  const rows = [];
  const stack = [...roots].reverse();
  while (stack.length) {
    const item = stack.pop();
    rows.push(item);
    if (!collapsed.has(item)) {
      for (let i = item.children.length - 1; i >= 0; i--) stack.push(item.children[i]);
    }
  }
  return rows;
}

// The exceptions of a ``cause`` of any shape: [{type, message, remote, stack: [{label, path, line}]}]
export function exceptionsOf(entity) {
  const cause = entity && entity.cause;
  if (!isObject(cause)) return [];
  return objects(cause.exceptions).map((ex) => ({
    id: text(ex.id), type: text(ex.type, "Exception"), message: text(ex.message),
    remote: ex.remote === true,
    stack: objects(ex.stack).map((f) => ({
      label: text(f.label, "?"), path: text(f.path, "?"), line: num(f.line) ?? text(f.line, "?"),
    })),
  }));
}
