// The tabs of a job page. Each panel is {el, show(job), update(job), stop()}: show() is called
// when its tab opens, update() when the job changed while it is open.

import { get, post } from "./api.js";
import { datasetSection } from "./datasets.js";
import { errorBox, fill, fmtBytes, fmtNum, fmtTime, h, TERMINAL } from "./dom.js";

const MAX_EVENT_ROWS = 1000;
const LOG_LINES = 500;
const LOG_REFRESH_MS = 3000;

export function eventsPanel() {
  const body = h("tbody");
  const box = h("div", { class: "scroll-box" }, h("table", { class: "table compact", id: "events" },
    h("thead", {}, h("tr", {}, ["#", "Time", "Kind", "Message"].map((t) => h("th", {}, t)))), body));
  const hideSteps = h("input", { type: "checkbox", onchange: () => box.classList.toggle("hide-steps", hideSteps.checked) });
  const el = h("div", {}, h("label", { class: "row small" }, hideSteps, "hide step events"), box);
  return {
    el,
    show() {},
    update() {},
    add(event) {
      const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
      body.append(h("tr", { class: `kind-${event.kind}`, dataset: { id: event.id } },
        h("td", { class: "muted" }, event.id), h("td", { class: "muted" }, fmtTime(event.created_at)),
        h("td", {}, event.kind), h("td", {}, event.message)));
      while (body.children.length > MAX_EVENT_ROWS) body.firstChild.remove();
      if (atBottom) box.scrollTop = box.scrollHeight;
    },
  };
}

export function logPanel(jobId, signal) {
  const pre = h("pre", { class: "log", id: "trainer-log" });
  const note = h("span", { class: "muted small" });
  const el = h("div", {}, h("div", { class: "row between" }, note,
    h("button", { type: "button", class: "ghost", onclick: () => load() }, "Refresh")), pre);
  let timer = null;
  let job = null;

  async function load() {
    clearTimeout(timer);
    try {
      const text = await get(`/jobs/${jobId}/logs`, { tail: LOG_LINES }, signal);
      const follow = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent = text || "(no log yet: the trainer has not started)";
      if (follow) pre.scrollTop = pre.scrollHeight;
      note.textContent = `last ${LOG_LINES} lines, read ${new Date().toLocaleTimeString()}`;
    } catch (error) {
      if (signal.aborted) return;
      fill(note, errorBox(error));
    }
    if (el.isConnected && job && !TERMINAL.has(job.state)) timer = setTimeout(load, LOG_REFRESH_MS);
  }
  const show = (current) => {
    job = current;
    load();
  };
  return { el, show, update: show, stop: () => clearTimeout(timer) };
}

function chatLink(model) {
  return `#/chat?a=${encodeURIComponent(JSON.stringify(model))}`;
}

export function checkpointsPanel(jobId, signal) {
  const body = h("tbody");
  const status = h("div", { class: "status-line" });
  const el = h("div", {}, status, h("table", { class: "table", id: "checkpoints" },
    h("thead", {}, h("tr", {}, ["Step", "Size", "Eval metrics", "Saved", "Adapter"].map((t) => h("th", {}, t)))), body));
  // step -> adapter id of the promoted checkpoints: the service's, and ours since, so that a
  // listing read before a promotion finished cannot show its button again
  const promoted = new Map();
  const panel = {
    el,
    stale: true,
    show,
    update() {
      if (panel.stale) show();
    },
  };

  async function promote(step) {
    try {
      const adapter = await post(`/jobs/${jobId}/checkpoints/${step}/promote`, undefined, signal);
      promoted.set(step, adapter.id);
      const cell = body.querySelector(`tr[data-step="${step}"] .adapter-cell`); // the table may be new
      if (cell) fill(cell, adapterCell(adapter.id, step));
    } catch (error) {
      fill(status, errorBox(error));
    }
  }

  function adapterCell(adapterId, step) {
    return [h("span", { class: "mono small adapter-id" }, adapterId), " ",
      h("a", { href: chatLink(adapterId), class: "small" }, "chat"), " · ",
      h("a", { href: chatLink({ job: jobId, checkpoint: step }), class: "small muted" }, "chat without promoting")];
  }

  function row(c) {
    const cell = h("td", { class: "adapter-cell" });
    if (promoted.has(c.step)) fill(cell, adapterCell(promoted.get(c.step), c.step));
    else fill(cell, h("button", { type: "button", class: "small-button", dataset: { promote: c.step }, onclick: () => promote(c.step) }, "Promote"));
    const metrics = Object.entries(c.metrics || {}).filter(([name]) => /^(rouge|bleu|loss)/.test(name));
    return h("tr", { dataset: { step: c.step } }, h("td", {}, c.step), h("td", {}, fmtBytes(c.bytes)),
      h("td", { class: "small" }, metrics.length ? metrics.map(([n, v]) => `${n} ${fmtNum(v)}`).join(" · ") : "—"),
      h("td", { class: "muted" }, fmtTime(c.created_at)), cell);
  }

  async function show() {
    panel.stale = false;
    try {
      const [checkpoints, adapters] = await Promise.all([
        get(`/jobs/${jobId}/checkpoints`, {}, signal),
        get("/adapters", {}, signal),
      ]);
      for (const a of adapters.data) {
        if (a.job_id === jobId && a.id.includes(":ckpt-")) promoted.set(a.step, a.id);
      }
      const rows = checkpoints.data.map(row);
      fill(body, rows.length ? rows : h("tr", {}, h("td", { colspan: 5, class: "muted" }, "no checkpoints yet")));
      fill(status);
    } catch (error) {
      panel.stale = true;
      if (!signal.aborted) fill(status, errorBox(error));
    }
  }
  return panel;
}

export function datasetPanel(signal) {
  const el = h("div", { id: "dataset-report" });
  let loaded = null;
  return {
    el,
    update() {},
    async show(job) {
      if (loaded === job.id) return;
      loaded = job.id;
      fill(el, h("p", { class: "muted" }, "loading…"));
      try {
        const sections = [await datasetSection(job.training_dataset, "training", signal)];
        if (job.validation_dataset) sections.push(await datasetSection(job.validation_dataset, "validation", signal));
        fill(el, sections);
      } catch (error) {
        loaded = null;
        if (!signal.aborted) fill(el, errorBox(error));
      }
    },
  };
}
