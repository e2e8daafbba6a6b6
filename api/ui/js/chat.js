// Side-by-side chat: the same messages go to two models, both answers stream at once
// (POST /chat with stream: true: delta frames, then a done or an error frame).

import { stream } from "./api.js";
import { errorBox, fill, h } from "./dom.js";
import { modelChoices, modelKey, modelOptions } from "./models.js";

class Side {
  constructor(name, choices, selected) {
    this.name = name;
    this.history = []; // this model's conversation: the shared user turns and its own answers
    this.select = h("select", { class: "model-select", "aria-label": `model ${name}`, dataset: { side: name } }, modelOptions(choices, selected));
    this.log = h("div", { class: "transcript", dataset: { side: name } });
    this.el = h("section", { class: "card chat-side" }, this.select, this.log);
  }

  get model() {
    return JSON.parse(this.select.value);
  }

  clear() {
    this.history = [];
    fill(this.log);
  }

  async send(text, settings, signal) {
    this.history.push({ role: "user", content: text });
    this.log.append(h("div", { class: "msg user" }, text));
    const body = h("div", { class: "msg-text" });
    const footer = h("div", { class: "msg-footer muted small" }, "streaming…");
    const bubble = h("div", { class: "msg assistant", dataset: { state: "streaming", deltas: "0" } }, body, footer);
    this.log.append(bubble);
    const messages = settings.system ? [{ role: "system", content: settings.system }, ...this.history] : [...this.history];
    const request = { model: this.model, messages, stream: true, temperature: settings.temperature, max_new_tokens: settings.maxNewTokens };
    let deltas = 0;
    let answer = "";
    try {
      await stream("/chat", {
        method: "POST",
        body: request,
        signal,
        onFrame: (frame) => {
          if (frame.event === "delta") {
            deltas += 1;
            answer += frame.data.text;
            body.textContent = answer;
            bubble.dataset.deltas = String(deltas);
            this.log.scrollTop = this.log.scrollHeight;
          } else if (frame.event === "done") {
            const done = frame.data;
            answer = done.message.content;
            body.textContent = answer;
            bubble.dataset.state = "done";
            footer.textContent = `${done.finish_reason} · ${done.usage.completion_tokens} tokens · ${deltas} chunks · ${(done.timings.total_ms / 1000).toFixed(2)} s · ${done.timings.tokens_per_second.toFixed(1)} tok/s`;
          } else if (frame.event === "error") {
            bubble.dataset.state = "error";
            fill(footer, errorBox(frame.data.error));
          }
        },
      });
      if (bubble.dataset.state === "streaming") {
        bubble.dataset.state = "error";
        footer.textContent = "the stream ended without an answer";
      }
    } catch (error) {
      bubble.dataset.state = "error";
      fill(footer, error.name === "AbortError" ? "stopped" : errorBox(error));
    }
    this.history.push({ role: "assistant", content: answer });
  }
}

export function chatPage(view, params) {
  let controller = new AbortController();
  const status = h("div", { class: "status-line" });
  fill(view, h("h1", {}, "Chat"), status, h("p", { class: "muted" }, "loading models…"));

  async function start() {
    let choices;
    try {
      choices = await modelChoices(controller.signal);
    } catch (error) {
      fill(status, errorBox(error));
      return;
    }
    if (!choices.length) {
      fill(status, h("p", { class: "muted" }, "no models: register a base model (GLMFT_MODELS)"));
      return;
    }
    const keys = choices.map((c) => modelKey(c.model));
    const wanted = (name, fallback) => {
      const given = params.get(name);
      return given && keys.includes(given) ? given : fallback;
    };
    const firstAdapter = choices.find((c) => c.group !== "Base models");
    const left = new Side("a", choices, wanted("a", keys[0]));
    const right = new Side("b", choices, wanted("b", firstAdapter ? modelKey(firstAdapter.model) : keys[Math.min(1, keys.length - 1)]));
    const system = h("input", { id: "system", type: "text", placeholder: "system prompt (optional)" });
    const temperature = h("input", { id: "temperature", type: "number", min: "0", max: "2", step: "0.1", value: "0.8" });
    const maxTokens = h("input", { id: "max-new-tokens", type: "number", min: "1", max: "4096", value: "128" });
    const input = h("textarea", { id: "prompt", rows: "2", placeholder: "Message both models (Ctrl+Enter sends)" });
    const sendButton = h("button", { type: "submit", id: "send" }, "Send");
    const stopButton = h("button", { type: "button", class: "ghost", disabled: true, onclick: () => controller.abort() }, "Stop");

    async function send(event) {
      event.preventDefault();
      const text = input.value.trim();
      if (!text) return;
      input.value = "";
      controller = new AbortController();
      sendButton.disabled = true;
      stopButton.disabled = false;
      const settings = { system: system.value.trim(), temperature: Number(temperature.value), maxNewTokens: Number(maxTokens.value) };
      await Promise.all([left.send(text, settings, controller.signal), right.send(text, settings, controller.signal)]);
      sendButton.disabled = false;
      stopButton.disabled = true;
      input.focus();
    }
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) send(event);
    });
    const form = h("form", { class: "composer", onsubmit: send }, input,
      h("div", { class: "row" }, sendButton, stopButton,
        h("button", { type: "button", class: "ghost", onclick: () => { left.clear(); right.clear(); } }, "Clear")));
    fill(
      view,
      h("h1", {}, "Chat"),
      status,
      h("div", { class: "row settings" }, system, h("label", {}, "temperature ", temperature), h("label", {}, "max new tokens ", maxTokens)),
      h("div", { class: "chat-grid" }, left.el, right.el),
      form,
    );
  }
  start();
  return () => controller.abort();
}
