// The dashboard's entry: hash routes (#/jobs[/<id>], #/datasets[/<id>], #/evaluations[/<id>],
// #/chat), the navigation, and the API key dialog (opened by the header button and by any 401).

import { getKey, setKey, setUnauthorizedHandler } from "./api.js";
import { parseHash } from "./dom.js";
import { chatPage } from "./chat.js";
import { datasetPage, datasetsPage } from "./datasets.js";
import { evaluationPage } from "./evaluation.js";
import { evaluationsPage } from "./evaluations.js";
import { jobPage } from "./job.js";
import { jobsPage } from "./jobs.js";

const view = document.getElementById("view");
const dialog = document.getElementById("key-dialog");
const keyInput = document.getElementById("key-input");
const keyError = document.getElementById("key-error");
const keyButton = document.getElementById("key-button");
let cleanup = null;

function route() {
  if (cleanup) cleanup();
  cleanup = null;
  const { parts, params } = parseHash(location.hash);
  const [section, id] = parts;
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === (section || "jobs"));
  }
  if (section === "jobs" && id) cleanup = jobPage(view, id);
  else if (section === "datasets" && id) cleanup = datasetPage(view, id);
  else if (section === "datasets") cleanup = datasetsPage(view, params);
  else if (section === "evaluations" && id) cleanup = evaluationPage(view, id);
  else if (section === "evaluations") cleanup = evaluationsPage(view, params);
  else if (section === "chat") cleanup = chatPage(view, params);
  else cleanup = jobsPage(view, params);
  document.title = `glmft · ${section || "jobs"}${id ? ` ${id}` : ""}`;
}

function showKeyState() {
  keyButton.textContent = getKey() ? "API key ✓" : "API key";
}

function openKeyDialog(message) {
  keyError.hidden = !message;
  keyError.textContent = message || "";
  keyInput.value = getKey();
  if (!dialog.open) dialog.showModal();
  keyInput.focus();
}

setUnauthorizedHandler((error) => {
  const message = getKey() ? `The service refused this key: ${error.message}` : "This glmft needs an API key.";
  openKeyDialog(message);
});

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setKey(keyInput.value.trim());
  dialog.close();
  showKeyState();
  route();
});
document.getElementById("key-clear").addEventListener("click", () => {
  setKey("");
  keyInput.value = "";
  showKeyState();
});
keyButton.addEventListener("click", () => openKeyDialog(""));
window.addEventListener("hashchange", route);

showKeyState();
if (!location.hash) history.replaceState(null, "", "#/jobs");
route();
