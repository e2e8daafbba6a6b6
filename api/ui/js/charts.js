// Charts drawn by uPlot (vendor/uplot, MIT): step curves that grow live, and a histogram.

import uPlot from "../vendor/uplot/uPlot.esm.js";
import { h } from "./dom.js";

const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563"];
const HEIGHT = 170;
// whole steps on the x axis (uPlot would otherwise tick 2.5 between two evaluations)
const STEP_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6];

function widthOf(el) {
  return Math.max(240, Math.floor(el.getBoundingClientRect().width) || 320);
}

/**
 * A card with a line chart of values by training step. ``upsert(series, step, value)`` adds or
 * replaces one point (history and live events may deliver the same step twice); the chart is
 * redrawn once per animation frame. The uPlot instance is ``card.querySelector(".chart").uplot``.
 */
export class StepChart {
  constructor(title, { name, log = false, rightScale = () => false } = {}) {
    this.log = log;
    this.rightScale = rightScale;
    this.series = new Map(); // series label -> Map(step -> value)
    this.plot = null;
    this.pending = false;
    this.count = h("span", { class: "muted count" });
    this.body = h("div", { class: "chart" });
    this.empty = h("p", { class: "muted empty" }, "no values yet");
    this.card = h(
      "section",
      { class: "card chart-card", dataset: { chart: name || title, points: "0" } },
      h("h3", {}, title, " ", this.count),
      this.body,
      this.empty,
    );
    this.resize = new ResizeObserver(() => {
      if (this.plot) this.plot.setSize({ width: widthOf(this.body), height: HEIGHT });
    });
    this.resize.observe(this.body);
  }

  upsert(series, step, value) {
    if (typeof value !== "number" || !Number.isFinite(value)) return;
    if (!this.series.has(series)) this.series.set(series, new Map());
    this.series.get(series).set(step, value);
    if (!this.pending) {
      this.pending = true;
      requestAnimationFrame(() => this.draw());
    }
  }

  draw() {
    this.pending = false;
    const labels = [...this.series.keys()];
    const steps = [...new Set(labels.flatMap((l) => [...this.series.get(l).keys()]))];
    steps.sort((a, b) => a - b);
    const data = [steps, ...labels.map((l) => steps.map((s) => this.series.get(l).get(s) ?? null))];
    const current = this.plot && this.plot.series.slice(1).map((s) => s.label);
    if (!this.plot || current.join("\u0000") !== labels.join("\u0000")) {
      if (this.plot) this.plot.destroy();
      this.plot = new uPlot(this.options(labels), data, this.body);
      this.body.uplot = this.plot;
    } else {
      this.plot.setData(data);
    }
    this.empty.hidden = steps.length > 0;
    this.card.dataset.points = String(steps.length);
    this.count.textContent = `${steps.length} step${steps.length === 1 ? "" : "s"}`;
  }

  options(labels) {
    // series on another scale (BLEU-4 is 0-1 beside ROUGE's 0-100) get the right-hand axis
    const right = labels.some((label) => this.rightScale(label));
    return {
      width: widthOf(this.body),
      height: HEIGHT,
      scales: { x: { time: false }, y: this.log ? { distr: 3 } : {}, ...(right ? { right: {} } : {}) },
      legend: { show: labels.length > 1, live: false },
      cursor: { drag: { x: true, y: false } },
      axes: [
        { label: "step", labelSize: 18, size: 32, incrs: STEP_INCRS },
        { size: 48 },
        ...(right ? [{ scale: "right", side: 1, size: 44, grid: { show: false } }] : []),
      ],
      series: [
        { label: "step" },
        ...labels.map((label, i) => ({
          label,
          scale: this.rightScale(label) ? "right" : "y",
          stroke: PALETTE[i % PALETTE.length],
          width: 1.5,
          dash: this.rightScale(label) ? [4, 3] : undefined,
          spanGaps: true,
          points: { size: 4 },
        })),
      ],
    };
  }

  destroy() {
    this.resize.disconnect();
    if (this.plot) this.plot.destroy();
  }
}

/** A card with a bar chart of ``counts`` over the bins ``edges`` (``counts.length + 1`` edges). */
export function histogramCard(title, edges, counts, xLabel) {
  const body = h("div", { class: "chart" });
  const card = h("section", { class: "card chart-card", dataset: { chart: title } }, h("h3", {}, title), body);
  const centers = counts.map((_, i) => (edges[i] + edges[i + 1]) / 2);
  const width = edges.length > 1 ? edges[1] - edges[0] : 1;
  requestAnimationFrame(() => {
    const plot = new uPlot(
      {
        width: widthOf(body),
        height: HEIGHT,
        legend: { show: false },
        scales: {
          x: { time: false, range: () => [edges[0], edges[edges.length - 1]] },
          y: { range: (_u, _min, max) => [0, Math.max(1, max) * 1.1] },
        },
        axes: [{ label: xLabel, labelSize: 18, size: 32 }, { size: 40 }],
        series: [
          { label: xLabel, value: (_u, x) => (x == null ? "" : `${x - width / 2}–${x + width / 2}`) },
          {
            label: "conversations",
            fill: "rgba(37, 99, 235, 0.35)",
            stroke: PALETTE[0],
            paths: uPlot.paths.bars({ size: [0.92, Infinity] }),
            points: { show: false },
          },
        ],
      },
      [centers, counts],
      body,
    );
    body.uplot = plot;
  });
  return card;
}
