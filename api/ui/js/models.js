// What can answer a chat or be evaluated: base models and adapters (GET /models), and the
// checkpoints of recent jobs (served without promoting them: {job, checkpoint}).

import { get } from "./api.js";
import { h } from "./dom.js";

const RECENT_JOBS = 20;

/** [{group, label, model}] where ``model`` is what POST /chat takes as ``model``. */
export async function modelChoices(signal) {
  const [models, jobs] = await Promise.all([
    get("/models", {}, signal),
    get("/jobs", { limit: RECENT_JOBS }, signal),
  ]);
  const choices = models.data.map((m) => ({
    group: m.kind === "base" ? "Base models" : "Adapters",
    label: m.id,
    model: m.id,
  }));
  const withSteps = jobs.data.filter((j) => j.step > 0);
  const lists = await Promise.all(withSteps.map((j) => get(`/jobs/${j.id}/checkpoints`, {}, signal)));
  withSteps.forEach((job, i) => {
    for (const c of lists[i].data) {
      choices.push({ group: "Checkpoints", label: `${job.id} @ step ${c.step}`, model: { job: job.id, checkpoint: c.step } });
    }
  });
  return choices;
}

export const modelKey = (model) => JSON.stringify(model);

export function modelLabel(model) {
  return typeof model === "string" ? model : `${model.job} @ step ${model.checkpoint}`;
}

/** ``<option>``s grouped like the choices; ``selected`` is a modelKey. */
export function modelOptions(choices, selected) {
  const groups = new Map();
  for (const choice of choices) {
    if (!groups.has(choice.group)) groups.set(choice.group, []);
    const key = modelKey(choice.model);
    groups.get(choice.group).push(h("option", { value: key, selected: key === selected }, choice.label));
  }
  return [...groups].map(([label, options]) => h("optgroup", { label }, options));
}
