// One evaluation: its models side by side (metrics table, best value marked), then each sample's
// prompt, reference and every model's output, diffed word by word against the reference.

import { get, post, stream } from "./api.js";
import { badge, errorBox, fill, fmtNum, fmtTime, h, TERMINAL } from "./dom.js";
import { wordDiff } from "./diff.js";
import { evalProgress } from "./evaluations.js";

const METRICS = ["rouge-1", "rouge-2", "rouge-l", "bleu-4"];
// ROUGE is reported as F x 100, BLEU-4 as 0-1 (the upstream demo's scales): bars fill to 100%
const SCALE = { "rouge-1": 1, "rouge-2": 1, "rouge-l": 1, "bleu-4": 100 };
const SAMPLES_PAGE = 10;
const POLL_MS = 2000;

function metricsTable(evaluation) {
  const metrics = evaluation.metrics || {};
  const models = evaluation.models || [];
  const best = Object.fromEntries(METRICS.map((m) => [m, Math.max(...models.map((model) => metrics[model]?.[m] ?? -Infinity))]));
  return h("table", { class: "table metrics", id: "eval-metrics" },
    h("thead", {}, h("tr", {}, h("th", {}, "Model"), METRICS.map((m) => h("th", {}, m)))),
    h("tbody", {}, models.map((model) => h("tr", { dataset: { model } },
      h("td", { class: "mono small" }, model),
      METRICS.map((m) => {
        const value = metrics[model]?.[m];
        if (typeof value !== "number") return h("td", { class: "muted" }, "—");
        const isBest = models.length > 1 && value === best[m];
        return h("td", { class: isBest ? "best" : "", dataset: { metric: m, value } },
          h("span", { class: "bar", style: { width: `${Math.max(0, Math.min(100, value * SCALE[m]))}%` } }), h("span", { class: "bar-value" }, fmtNum(value)));
      })))));
}

function diffView(reference, output) {
  return wordDiff(reference, output).map((seg) =>
    seg.op === "same" ? seg.text : h(seg.op === "add" ? "ins" : "del", {}, seg.text));
}

function promptView(messages) {
  return (messages || []).map((m) => h("div", { class: `prompt-msg role-${m.role}` }, h("span", { class: "role" }, m.role), " ", m.content ?? ""));
}

function sampleCard(sample, models) {
  return h("article", { class: "card sample", dataset: { index: sample.index } },
    h("div", { class: "sample-head" }, h("span", { class: "muted" }, `#${sample.index}`), h("div", { class: "prompt" }, promptView(sample.messages))),
    h("div", { class: "reference" }, h("span", { class: "label" }, "reference"), " ", sample.reference),
    h("div", { class: "outputs", style: { gridTemplateColumns: `repeat(${Math.min(models.length, 3)}, minmax(0, 1fr))` } },
      models.map((model) => {
        const output = sample.outputs?.[model];
        if (!output) return h("div", { class: "output pending", dataset: { model } }, h("span", { class: "mono small" }, model), h("p", { class: "muted" }, "no answer yet"));
        const scores = output.scores || {};
        const facts = [...METRICS.filter((m) => m in scores).map((m) => `${m} ${fmtNum(scores[m])}`),
          `${output.completion_tokens} tokens`, output.finish_reason === "length" ? "cut at max_new_tokens" : null].filter(Boolean);
        return h("div", { class: "output", dataset: { model } },
          h("div", { class: "output-head" }, h("span", { class: "mono small" }, model), h("span", { class: "muted small" }, facts.join(" · "))),
          h("div", { class: "output-text" }, diffView(sample.reference || "", output.text)));
      })));
}

export function evaluationPage(view, id) {
  const controller = new AbortController();
  const { signal } = controller;
  const header = h("div");
  const status = h("div", { class: "status-line" });
  const metrics = h("div");
  const samples = h("div", { id: "samples" });
  const more = h("button", { type: "button", class: "ghost", hidden: true, onclick: () => loadSamples(false) }, "More samples");
  const missing = h("input", { type: "checkbox", checked: true, onchange: () => samples.classList.toggle("hide-del", !missing.checked) });
  let evaluation = null;
  let after = null;
  let pages = 0;
  let stopped = false;
  let timer = null;

  function render() {
    const live = !TERMINAL.has(evaluation.state);
    fill(header,
      h("div", { class: "row between" }, h("h1", {}, h("span", { class: "mono" }, evaluation.id), " ", badge(evaluation.state)),
        h("div", { class: "row" }, h("span", { class: "eval-progress" }, evalProgress(evaluation)),
          live && h("button", { type: "button", id: "cancel", class: "danger", onclick: cancel }, "Cancel"))),
      h("p", { class: "muted", id: "eval-meta" }, [evaluation.name, `dataset ${evaluation.dataset}`,
        `${evaluation.samples} samples${evaluation.skipped ? ` (${evaluation.skipped} skipped: no final assistant reply)` : ""}`,
        `max ${evaluation.max_new_tokens} new tokens`, `temperature ${evaluation.temperature}`,
        `created ${fmtTime(evaluation.created_at)}`, evaluation.finished_at && `finished ${fmtTime(evaluation.finished_at)}`].filter(Boolean).join(" · ")),
      evaluation.error && errorBox(evaluation.error));
    fill(metrics, metricsTable(evaluation));
  }

  async function cancel() {
    if (!confirm(`Cancel ${id}? The answers stored so far stay.`)) return;
    try {
      evaluation = await post(`/evaluations/${id}/cancel`, undefined, signal);
      render();
    } catch (error) {
      fill(status, errorBox(error));
    }
  }

  async function refresh() {
    const before = evaluation && evaluation.state;
    evaluation = await get(`/evaluations/${id}`, {}, signal);
    render();
    // answers arrive while it runs: the first page follows them unless more pages are open
    const ended = before !== evaluation.state && TERMINAL.has(evaluation.state);
    if (ended || (!TERMINAL.has(evaluation.state) && pages <= 1)) await loadSamples(true);
  }

  async function loadSamples(reset) {
    try {
      if (reset) {
        after = null;
        pages = 0;
      }
      pages += 1;
      const page = await get(`/evaluations/${id}/samples`, { limit: SAMPLES_PAGE, after: after ?? undefined }, signal);
      const cards = page.data.map((s) => sampleCard(s, evaluation.models || []));
      if (reset) fill(samples, cards);
      else samples.append(...cards);
      if (reset && !page.data.length) fill(samples, h("p", { class: "muted" }, "no samples yet"));
      after = page.next_cursor;
      more.hidden = !page.has_more;
    } catch (error) {
      if (!stopped) fill(status, errorBox(error));
    }
  }

  // One refresh at a time: frames arriving meanwhile ask for one more afterwards.
  let refreshing = false;
  let again = false;
  async function refreshSoon() {
    if (refreshing) {
      again = true;
      return;
    }
    refreshing = true;
    try {
      await refresh();
    } catch (error) {
      if (!stopped) fill(status, errorBox(error));
    }
    refreshing = false;
    if (again) {
      again = false;
      refreshSoon();
    }
  }

  // Live progress: the event stream when it is there, polling otherwise; both end when finished.
  async function follow() {
    try {
      await stream(`/evaluations/${id}/events`, { signal, onFrame: refreshSoon });
      await refresh();
    } catch (error) {
      if (stopped) return;
    }
    while (!stopped && !TERMINAL.has(evaluation.state)) {
      await new Promise((resolve) => { timer = setTimeout(resolve, POLL_MS); });
      try {
        await refresh();
      } catch (error) {
        if (!stopped) fill(status, errorBox(error));
      }
    }
  }

  async function start() {
    fill(view, h("p", { class: "muted" }, "loading…"));
    try {
      evaluation = await get(`/evaluations/${id}`, {}, signal);
    } catch (error) {
      fill(view, h("p", {}, h("a", { href: "#/evaluations" }, "← evaluations")), errorBox(error));
      return;
    }
    fill(view, h("p", { class: "crumbs" }, h("a", { href: "#/evaluations" }, "← evaluations")), header, status, metrics,
      h("div", { class: "row between" }, h("h2", {}, "Samples"),
        h("label", { class: "row small" }, missing, h("span", {}, "show reference words an output misses (", h("del", {}, "struck"), "); extra words are ", h("ins", {}, "marked"), ")"))),
      samples, more);
    render();
    await loadSamples(true);
    if (!TERMINAL.has(evaluation.state)) follow();
  }
  start();
  return () => {
    stopped = true;
    controller.abort();
    clearTimeout(timer);
  };
}
