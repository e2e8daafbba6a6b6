// Datasets: the list, and one dataset's validation report (errors and warnings by line, the
// token length histogram when it was uploaded with a model). Job pages show the same report.

import { get } from "./api.js";
import { histogramCard } from "./charts.js";
import { errorBox, fill, fmtBytes, fmtTime, h } from "./dom.js";

const MAX_ISSUE_ROWS = 200;
const PAGE = 50;

function issuesTable(issues, id) {
  const shown = issues.slice(0, MAX_ISSUE_ROWS);
  return [
    h("table", { class: "table compact issues", id },
      h("thead", {}, h("tr", {}, ["Line", "Path", "Code", "Message"].map((t) => h("th", {}, t)))),
      h("tbody", {}, shown.map((i) => h("tr", { dataset: { line: i.line ?? "" } },
        h("td", {}, i.line ?? "—"), h("td", { class: "mono small" }, i.path),
        h("td", { class: "mono small" }, i.code), h("td", {}, i.message))))),
    issues.length > shown.length && h("p", { class: "muted" }, `and ${issues.length - shown.length} more`),
  ];
}

/** A section with the report of dataset ``datasetId``; ``role`` names it ("training", ...). */
export async function datasetSection(datasetId, role, signal) {
  const [dataset, report] = await Promise.all([
    get(`/datasets/${datasetId}`, {}, signal),
    get(`/datasets/${datasetId}/report`, {}, signal),
  ]);
  const stats = report.stats || {};
  const counts = `${report.conversations} conversations · ${dataset.error_count} errors · ${dataset.warning_count} warnings`;
  const histogram = stats.histogram && stats.histogram.counts.length
    ? histogramCard(`Token lengths (max_length ${stats.max_length}; ${stats.truncated} truncated)`, stats.histogram.edges, stats.histogram.counts, "tokens")
    : h("p", { class: "muted" }, stats.error || "no token statistics: upload the file with a model to see its length histogram");
  return h("section", { class: "dataset", dataset: { dataset: datasetId, role } },
    h("h3", {}, `${role}: `, h("span", { class: "mono" }, dataset.filename), " ", h("span", { class: "muted small mono" }, datasetId)),
    h("p", {}, report.valid ? "valid" : h("strong", { class: "error-text" }, "invalid"), " · ", counts,
      ` · ${fmtBytes(dataset.bytes)}`, report.truncated ? " (report truncated)" : ""),
    h("div", { class: "dataset-grid" }, histogram,
      h("div", {},
        report.errors.length ? issuesTable(report.errors, `errors-${role}`) : h("p", { class: "muted" }, "no errors"),
        report.warnings.length > 0 && h("details", {}, h("summary", {}, `${report.warnings.length} warnings`), issuesTable(report.warnings, `warnings-${role}`)))));
}

function row(d) {
  return h("tr", { dataset: { dataset: d.id } },
    h("td", {}, h("a", { href: `#/datasets/${d.id}`, class: "mono" }, d.id)),
    h("td", {}, d.filename),
    h("td", {}, h("span", { class: `badge state-${d.valid ? "succeeded" : "failed"}` }, d.valid ? "valid" : "invalid")),
    h("td", {}, d.conversations),
    h("td", {}, d.error_count),
    h("td", {}, d.warning_count),
    h("td", { class: "muted" }, fmtTime(d.created_at)));
}

export function datasetsPage(view) {
  const controller = new AbortController();
  const body = h("tbody");
  const status = h("div", { class: "status-line" });
  const more = h("button", { type: "button", class: "ghost", hidden: true }, "Load more");
  let after;
  async function load() {
    try {
      const page = await get("/datasets", { limit: PAGE, after }, controller.signal);
      body.append(...page.data.map(row));
      if (!body.children.length) body.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "no datasets")));
      after = page.next_cursor;
      more.hidden = !page.has_more;
    } catch (error) {
      if (!controller.signal.aborted) fill(status, errorBox(error));
    }
  }
  more.addEventListener("click", load);
  fill(view, h("h1", {}, "Datasets"), status,
    h("table", { class: "table", id: "datasets" },
      h("thead", {}, h("tr", {}, ["Dataset", "File", "Valid", "Conversations", "Errors", "Warnings", "Uploaded"].map((t) => h("th", {}, t)))), body),
    more);
  load();
  return () => controller.abort();
}

export function datasetPage(view, id) {
  const controller = new AbortController();
  fill(view, h("p", { class: "muted" }, "loading…"));
  datasetSection(id, "dataset", controller.signal).then(
    (section) => fill(view, h("p", { class: "crumbs" }, h("a", { href: "#/datasets" }, "← datasets")), section),
    (error) => {
      if (!controller.signal.aborted) fill(view, h("p", {}, h("a", { href: "#/datasets" }, "← datasets")), errorBox(error));
    });
  return () => controller.abort();
}
