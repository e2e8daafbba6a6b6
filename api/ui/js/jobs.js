// The jobs list: your jobs (the API shows only the key's tenant), filtered by state, refreshed
// every few seconds while the page is open.

import { get } from "./api.js";
import { badge, errorBox, fill, fmtTime, h, progressBar } from "./dom.js";

const STATES = ["queued", "running", "cancelling", "paused", "succeeded", "failed", "cancelled"];
const REFRESH_MS = 3000;
const PAGE = 50;

export function jobProgress(job) {
  if (job.max_steps) return progressBar(job.progress, `${job.step} / ${job.max_steps}`);
  return h("span", { class: "muted" }, job.step ? `step ${job.step}` : "—");
}

function row(job) {
  return h(
    "tr",
    { dataset: { job: job.id } },
    h("td", {}, h("a", { href: `#/jobs/${job.id}`, class: "mono" }, job.id)),
    h("td", {}, badge(job.state)),
    h("td", {}, job.model),
    h("td", {}, job.method),
    h("td", { class: "progress-cell" }, jobProgress(job)),
    h("td", { class: "muted nowrap" }, fmtTime(job.created_at)),
    h("td", { class: "mono small" }, job.adapter_id || ""),
  );
}

/** Render the jobs list into ``view``; returns the cleanup of the route. */
export function jobsPage(view, params) {
  const state = params.get("state") || "";
  const select = h(
    "select",
    {
      id: "state-filter",
      "aria-label": "state",
      onchange: () => {
        location.hash = select.value ? `#/jobs?state=${select.value}` : "#/jobs";
      },
    },
    h("option", { value: "" }, "all states"),
    STATES.map((s) => h("option", { value: s, selected: s === state }, s)),
  );
  const body = h("tbody");
  const status = h("div", { class: "status-line" });
  const more = h("button", { type: "button", class: "ghost", hidden: true }, "Load more");
  let pages = 1;
  let timer = null;
  let stopped = false;

  async function load() {
    try {
      const jobs = [];
      let after;
      for (let i = 0; i < pages; i += 1) {
        const page = await get("/jobs", { state: state || undefined, limit: PAGE, after });
        jobs.push(...page.data);
        more.hidden = !page.has_more;
        if (!page.has_more) break;
        after = page.next_cursor;
      }
      if (stopped) return;
      fill(body, jobs.length ? jobs.map(row) : h("tr", {}, h("td", { colspan: 7, class: "muted" }, "no jobs")));
      fill(status);
    } catch (error) {
      if (!stopped) fill(status, errorBox(error));
    }
    if (!stopped) timer = setTimeout(load, REFRESH_MS);
  }
  more.addEventListener("click", () => {
    pages += 1;
    clearTimeout(timer);
    load();
  });

  fill(
    view,
    h("div", { class: "row between" }, h("h1", {}, "Jobs"), h("label", { class: "row" }, "State ", select)),
    status,
    h(
      "table",
      { class: "table", id: "jobs" },
      h("thead", {}, h("tr", {}, ["Job", "State", "Model", "Method", "Progress", "Created", "Adapter"].map((t) => h("th", {}, t)))),
      body,
    ),
    more,
  );
  load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
