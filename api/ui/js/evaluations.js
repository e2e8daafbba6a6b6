// Evaluations: the list, and a form that starts one (POST /evaluations: several models on one
// dataset, scored with ROUGE and BLEU-4 against its references).

import { get, post } from "./api.js";
import { badge, errorBox, fill, fmtTime, h, progressBar } from "./dom.js";
import { modelChoices, modelKey } from "./models.js";

const REFRESH_MS = 3000;
const PAGE = 50;

export function evalProgress(evaluation) {
  const { done, total } = evaluation.progress || {};
  return total ? progressBar(done / total, `${done} / ${total}`) : h("span", { class: "muted" }, "—");
}

function row(e) {
  return h("tr", { dataset: { evaluation: e.id } },
    h("td", {}, h("a", { href: `#/evaluations/${e.id}`, class: "mono" }, e.id)),
    h("td", {}, e.name || ""),
    h("td", {}, badge(e.state)),
    h("td", { class: "small" }, (e.models || []).join(", ")),
    h("td", { class: "mono small nowrap" }, e.dataset),
    h("td", { class: "progress-cell" }, evalProgress(e)),
    h("td", { class: "muted nowrap" }, fmtTime(e.created_at)));
}

async function newEvaluationForm(signal, status) {
  const [choices, datasets] = await Promise.all([modelChoices(signal), get("/datasets", { limit: 100 }, signal)]);
  const boxes = choices.map((c, i) => h("label", { class: "check" },
    h("input", { type: "checkbox", name: "model", value: modelKey(c.model), checked: i < 2 }), c.label));
  const dataset = h("select", { id: "eval-dataset", "aria-label": "dataset" },
    datasets.data.filter((d) => d.valid).map((d) => h("option", { value: d.id }, `${d.filename} · ${d.conversations} conversations · ${d.id}`)));
  const name = h("input", { id: "eval-name", type: "text", placeholder: "name (optional)" });
  const limit = h("input", { id: "eval-limit", type: "number", min: "1", value: "20" });
  const maxTokens = h("input", { id: "eval-max-new-tokens", type: "number", min: "1", value: "64" });
  const temperature = h("input", { id: "eval-temperature", type: "number", min: "0", max: "2", step: "0.1", value: "0" });

  async function submit(event) {
    event.preventDefault();
    const models = boxes.map((b) => b.querySelector("input")).filter((i) => i.checked).map((i) => JSON.parse(i.value));
    try {
      const created = await post("/evaluations", {
        models,
        dataset: dataset.value,
        limit: Number(limit.value),
        max_new_tokens: Number(maxTokens.value),
        temperature: Number(temperature.value),
        name: name.value.trim() || undefined,
      }, signal);
      location.hash = `#/evaluations/${created.id}`;
    } catch (error) {
      fill(status, errorBox(error));
    }
  }
  return h("details", { class: "card", id: "new-evaluation" },
    h("summary", {}, "New evaluation"),
    h("form", { onsubmit: submit },
      h("p", { class: "muted small" }, "Models (pick two or more to compare them side by side):"),
      h("div", { class: "checks" }, boxes),
      h("div", { class: "row settings" }, h("label", {}, "dataset ", dataset), name),
      h("div", { class: "row settings" }, h("label", {}, "conversations ", limit), h("label", {}, "max new tokens ", maxTokens),
        h("label", {}, "temperature ", temperature), h("button", { type: "submit", id: "eval-start" }, "Start"))));
}

export function evaluationsPage(view) {
  const controller = new AbortController();
  const status = h("div", { class: "status-line" });
  const formSlot = h("div");
  const body = h("tbody");
  let timer = null;
  let stopped = false;

  async function load() {
    try {
      const page = await get("/evaluations", { limit: PAGE }, controller.signal);
      fill(body, page.data.length ? page.data.map(row) : h("tr", {}, h("td", { colspan: 7, class: "muted" }, "no evaluations yet")));
    } catch (error) {
      if (!stopped) fill(status, errorBox(error));
    }
    if (!stopped) timer = setTimeout(load, REFRESH_MS);
  }
  fill(view, h("h1", {}, "Evaluations"), status, formSlot,
    h("table", { class: "table", id: "evaluations" },
      h("thead", {}, h("tr", {}, ["Evaluation", "Name", "State", "Models", "Dataset", "Progress", "Created"].map((t) => h("th", {}, t)))), body));
  newEvaluationForm(controller.signal, status).then((form) => fill(formSlot, form), (error) => {
    if (!stopped) fill(status, errorBox(error));
  });
  load();
  return () => {
    stopped = true;
    controller.abort();
    clearTimeout(timer);
  };
}
