// Small DOM helpers: elements built from data (text is never parsed as HTML) and formatting.

/**
 * ``h("a", {href: "#/jobs", class: "x", onclick: fn}, "text", child)``: an element. Attributes
 * starting with "on" become listeners, ``dataset``/``style`` objects are merged, false/null
 * attributes and children are dropped, strings become text nodes.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset" || name === "style") Object.assign(el[name], value);
    else if (name === "class") el.className = value;
    else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace the children of ``el``. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export function badge(state) {
  return h("span", { class: `badge state-${state}`, dataset: { state } }, state);
}

export function progressBar(fraction, label) {
  const percent = Math.max(0, Math.min(1, fraction || 0)) * 100;
  return h(
    "span",
    { class: "progress", title: label || `${percent.toFixed(0)}%` },
    h("span", { class: "progress-fill", style: { width: `${percent}%` } }),
    h("span", { class: "progress-label" }, label || `${percent.toFixed(0)}%`),
  );
}

export function fmtTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  const today = new Date().toDateString() === date.toDateString();
  return today ? date.toLocaleTimeString() : date.toLocaleString();
}

export function fmtBytes(bytes) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

/** A number for a table cell: 4 significant digits, no exponent for ordinary sizes. */
export function fmtNum(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return String(value ?? "");
  if (value !== 0 && (Math.abs(value) < 1e-3 || Math.abs(value) >= 1e6)) {
    return value.toExponential(2);
  }
  return String(Number(value.toPrecision(4)));
}

/** The error line shown for a failed request. */
export function errorBox(error) {
  const text = error && error.code ? `${error.code}: ${error.message}` : String(error);
  return h("p", { class: "error", role: "alert" }, text);
}

/** Parse ``#/route/part?x=1`` into {parts, params}. */
export function parseHash(hash) {
  const [path, query] = hash.replace(/^#\/?/, "").split("?");
  return {
    parts: path.split("/").filter(Boolean).map(decodeURIComponent),
    params: new URLSearchParams(query || ""),
  };
}
