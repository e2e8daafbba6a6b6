// One job: state and actions, live curves (history from /metrics, then the event stream), and
// the tabs of job_panels.js (events, trainer log, checkpoints, dataset report).

import { get, post, stream } from "./api.js";
import { StepChart } from "./charts.js";
import { badge, errorBox, fill, fmtTime, h, TERMINAL } from "./dom.js";
import { jobProgress } from "./jobs.js";
import { checkpointsPanel, datasetPanel, eventsPanel, logPanel } from "./job_panels.js";

const CANCELLABLE = new Set(["queued", "running"]);
const RESUMABLE = new Set(["failed", "cancelled", "paused"]);
const SCORE = /^(rouge|bleu|accuracy)/;
const RECONNECT_MS = 2000;
const POLL_MS = 5000;

/** Route the values of one metric (split, name) to its chart and series; null: not drawn. */
function place(charts, split, name) {
  if (split === "train") {
    if (name === "loss") return [charts.loss, "train"];
    if (name === "learning_rate") return [charts.lr, "learning rate"];
    if (name === "grad_norm") return [charts.grad, "grad norm"];
    return null;
  }
  if (name === "loss") return [charts.loss, split];
  if (SCORE.test(name)) return [charts.evals, split === "validation" ? name : `${split} ${name}`];
  return null;
}

function plot(charts, split, name, step, value) {
  const target = place(charts, split, name);
  if (target) target[0].upsert(target[1], step, value);
}

export function jobPage(view, jobId) {
  const controller = new AbortController();
  const { signal } = controller;
  let job = null;
  let stopped = false;
  let pollTimer = null;

  const charts = {
    loss: new StepChart("Loss", { name: "loss" }),
    lr: new StepChart("Learning rate", { name: "learning_rate" }),
    grad: new StepChart("Grad norm", { name: "grad_norm" }),
    evals: new StepChart("Eval metrics", { name: "eval", rightScale: (label) => label.includes("bleu") }),
  };
  const header = h("div", { class: "job-header" });
  const status = h("div", { class: "status-line" });
  const events = eventsPanel();
  const log = logPanel(jobId, signal);
  const checkpoints = checkpointsPanel(jobId, signal);
  const dataset = datasetPanel(signal);
  const panels = { events, log, checkpoints, dataset };
  const tabBar = h("div", { class: "tabs", role: "tablist" });
  const tabBody = h("div", { class: "tab-body" });
  let activeTab = "events";

  function showTab(name) {
    activeTab = name;
    for (const button of tabBar.children) button.setAttribute("aria-selected", String(button.dataset.tab === name));
    fill(tabBody, panels[name].el);
    panels[name].show(job);
  }
  const tabNames = { events: "Events", log: "Trainer log", checkpoints: "Checkpoints", dataset: "Dataset" };
  for (const [name, label] of Object.entries(tabNames)) {
    tabBar.append(h("button", { type: "button", role: "tab", dataset: { tab: name }, onclick: () => showTab(name) }, label));
  }

  async function act(action) {
    if (action === "cancel" && !confirm(`Cancel ${jobId}?`)) return;
    try {
      job = await post(`/jobs/${jobId}/${action}`, action === "resume" ? {} : undefined, signal);
      renderHeader();
      if (action === "resume") follow(); // the finished stream ended: follow the new attempt
    } catch (error) {
      fill(status, errorBox(error));
    }
  }

  function renderHeader() {
    const meta = [
      `${job.model} · ${job.method} · ${job.gpus ? `${job.gpus} GPU${job.gpus > 1 ? "s" : ""}` : "CPU"}`,
      `attempt ${job.attempt}/${job.max_attempts}`,
      `created ${fmtTime(job.created_at)}`,
      job.finished_at ? `finished ${fmtTime(job.finished_at)}` : null,
    ].filter(Boolean);
    fill(
      header,
      h(
        "div",
        { class: "row between" },
        h("h1", {}, h("span", { class: "mono" }, job.id), " ", badge(job.state)),
        h(
          "div",
          { class: "row" },
          CANCELLABLE.has(job.state) && h("button", { type: "button", id: "cancel", class: "danger", onclick: () => act("cancel") }, "Cancel"),
          RESUMABLE.has(job.state) && h("button", { type: "button", id: "resume", onclick: () => act("resume") }, "Resume"),
        ),
      ),
      h("p", { class: "muted" }, meta.join(" · ")),
      h("div", { class: "row" }, h("span", { class: "job-progress", id: "job-progress" }, jobProgress(job)),
        job.adapter_id && h("span", {}, "adapter ", h("a", { class: "mono", href: `#/chat?a=${encodeURIComponent(JSON.stringify(job.adapter_id))}` }, job.adapter_id))),
      job.error && h("p", { class: "error" }, `${job.error.code}: ${job.error.message}`),
    );
  }

  async function refresh() {
    try {
      job = await get(`/jobs/${jobId}`, {}, signal);
      renderHeader();
      panels[activeTab].update(job);
    } catch (error) {
      if (!stopped) fill(status, errorBox(error));
    }
  }

  function poll() {
    clearTimeout(pollTimer);
    if (stopped || (job && TERMINAL.has(job.state))) return;
    pollTimer = setTimeout(async () => {
      await refresh();
      poll();
    }, POLL_MS);
  }

  let lastEvent = 0;
  let following = false;
  function onFrame(frame) {
    if (frame.event === "end") return;
    const event = frame.data;
    lastEvent = Math.max(lastEvent, event.id);
    events.add(event);
    const data = event.data || {};
    if (event.kind === "step") {
      for (const name of ["loss", "learning_rate", "grad_norm"]) plot(charts, "train", name, data.step, data[name]);
      if (job && data.step > job.step) {
        job.step = data.step;
        job.progress = job.max_steps ? data.step / job.max_steps : null;
        fill(header.querySelector("#job-progress"), jobProgress(job));
      }
    } else if (event.kind === "eval") {
      for (const [name, value] of Object.entries(data.metrics || {})) plot(charts, data.split || "validation", name, data.step, value);
    } else if (event.kind === "checkpoint") {
      checkpoints.stale = true;
      if (activeTab === "checkpoints") checkpoints.update(job);
    } else {
      refresh();
    }
  }

  // Past events, then live ones, until the job is finished; reconnects after a dropped stream.
  async function follow() {
    if (following) return;
    following = true;
    poll();
    while (!stopped) {
      try {
        await stream(`/jobs/${jobId}/events`, { query: { after: lastEvent }, signal, onFrame });
        await refresh();
        if (job && TERMINAL.has(job.state)) break;
      } catch (error) {
        if (stopped) break;
        fill(status, errorBox(error));
        if (error.status >= 400 && error.status < 500) break; // asking again will not help
      }
      await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
    }
    following = false;
  }

  async function start() {
    fill(view, h("p", { class: "muted" }, "loading…"));
    try {
      job = await get(`/jobs/${jobId}`, {}, signal);
    } catch (error) {
      fill(view, h("p", {}, h("a", { href: "#/jobs" }, "← jobs")), errorBox(error));
      return;
    }
    fill(
      view,
      h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "← jobs")),
      header,
      status,
      h("div", { class: "chart-grid" }, Object.values(charts).map((c) => c.card)),
      tabBar,
      tabBody,
    );
    renderHeader();
    showTab("events");
    try {
      const history = await getAllMetrics(jobId, signal);
      for (const m of history) plot(charts, m.split, m.name, m.step, m.value);
    } catch (error) {
      if (!stopped) fill(status, errorBox(error));
    }
    follow();
  }

  start();
  return () => {
    stopped = true;
    controller.abort();
    clearTimeout(pollTimer);
    for (const chart of Object.values(charts)) chart.destroy();
    for (const panel of Object.values(panels)) panel.stop?.();
  };
}

// The drawn metrics only (a step also records tokens/s and the epoch), each series in order.
const HISTORY = [
  { split: "train", name: "loss" },
  { split: "train", name: "learning_rate" },
  { split: "train", name: "grad_norm" },
  { split: "validation" },
  { split: "test" },
];

async function getAllMetrics(jobId, signal) {
  const lists = await Promise.all(HISTORY.map(async (filter) => {
    const metrics = [];
    let after;
    for (;;) {
      const page = await get(`/jobs/${jobId}/metrics`, { ...filter, limit: 10000, after }, signal);
      metrics.push(...page.data);
      if (!page.has_more) return metrics;
      after = page.next_cursor;
    }
  }));
  return lists.flat();
}
