// The REST API as the dashboard uses it: JSON requests with the pasted API key, the error
// envelope turned into ApiError, and Server-Sent Events read from fetch (EventSource cannot send
// an Authorization header).

const KEY_STORAGE = "glmft.apiKey";

export class ApiError extends Error {
  constructor(status, code, message, param) {
    super(message);
    this.status = status;
    this.code = code;
    this.param = param;
  }
}

export function getKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

// Called with the ApiError of every 401, so the app can ask for a key.
let onUnauthorized = () => {};
export function setUnauthorizedHandler(handler) {
  onUnauthorized = handler;
}

function headers(extra = {}) {
  const key = getKey();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : { ...extra };
}

async function failure(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not the envelope (a proxy's page): keep the status line
  }
  const error = body && body.error;
  const failed = error
    ? new ApiError(response.status, error.code, error.message, error.param)
    : new ApiError(response.status, "http_error", `${response.status} ${response.statusText}`);
  if (response.status === 401) onUnauthorized(failed);
  return failed;
}

/** GET/POST/DELETE ``path``; the parsed JSON (null for 204, text for text/plain). */
export async function request(method, path, { body, query, signal } = {}) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value === undefined || value === null || value === "") continue;
    for (const item of Array.isArray(value) ? value : [value]) url.searchParams.append(name, item);
  }
  const init = { method, signal, headers: headers() };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(url, init);
  if (!response.ok) throw await failure(response);
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  return type.includes("application/json") ? response.json() : response.text();
}

export const get = (path, query, signal) => request("GET", path, { query, signal });
export const post = (path, body, signal) => request("POST", path, { body, signal });

/** Every item of a paged list route (``{data, has_more, next_cursor}``), up to ``max``. */
export async function getAll(path, query = {}, { max = 100000, signal } = {}) {
  const items = [];
  let after;
  for (;;) {
    const page = await get(path, { ...query, after }, signal);
    items.push(...page.data);
    if (!page.has_more || items.length >= max) return items;
    after = page.next_cursor;
  }
}

/**
 * Read a Server-Sent Events response of ``path``, calling ``onFrame({id, event, data})`` for
 * each frame (``data`` parsed as JSON when it is). Resolves when the server ends the stream;
 * rejects with ApiError when it answers with an error, or with an AbortError on ``signal``.
 */
export async function stream(path, { method = "GET", body, query, signal, onFrame }) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null) url.searchParams.set(name, value);
  }
  const init = { method, signal, headers: headers({ Accept: "text/event-stream" }) };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(url, init);
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let frame = { id: null, event: "message", data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline).replace(/\r$/, "");
      buffer = buffer.slice(newline + 1);
      if (line === "") {
        if (frame.data.length) onFrame(finish(frame));
        frame = { id: null, event: "message", data: [] };
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") frame.data.push(text);
        else if (field === "event") frame.event = text;
        else if (field === "id") frame.id = text;
      }
    }
  }
}

function finish(frame) {
  const text = frame.data.join("\n");
  let data = text;
  try {
    data = JSON.parse(text);
  } catch {
    // plain text data stays a string
  }
  return { id: frame.id, event: frame.event, data };
}
