// Wires the page: the API key, the model picker, the tabs (ARIA tabs, arrow keys) and paste.

import { api, clearError, savedKey, saveKey, showError } from "./api.js";
import { setupClassify } from "./classify.js";
import { setupCompare } from "./compare.js";
import { pastedImages } from "./images.js";
import { setupSearch } from "./search.js";

const $ = (id) => document.getElementById(id);
const modelSelect = $("model");
const globalError = $("global-error");
const model = () => modelSelect.value;

async function loadModels() {
  clearError(globalError);
  try {
    const { data } = await api("GET", "v1/models");
    const previous = modelSelect.value;
    modelSelect.replaceChildren(...data.map((card) => {
      const option = document.createElement("option");
      option.value = card.id;
      option.textContent = `${card.id} (${card.input_resolution})`;
      return option;
    }));
    if (data.some((card) => card.id === previous)) modelSelect.value = previous;
    document.body.dataset.models = "loaded";
  } catch (error) {
    showError(globalError, error);
    document.body.dataset.models = "failed";
  }
}

const tools = {
  classify: setupClassify({ model }),
  search: setupSearch({ model }),
  compare: setupCompare({ model }),
};
const tabs = [...document.querySelectorAll('[role="tab"]')];
const nameOf = (tab) => tab.id.replace("tab-", "");
let active = "classify";

function select(name, { focus = false } = {}) {
  active = name;
  for (const tab of tabs) {
    const selected = nameOf(tab) === name;
    tab.setAttribute("aria-selected", String(selected));
    tab.tabIndex = selected ? 0 : -1;
    $(tab.getAttribute("aria-controls")).hidden = !selected;
    if (selected && focus) tab.focus();
  }
  if (name === "search") tools.search.refresh();
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
}

for (const tab of tabs) {
  tab.addEventListener("click", () => select(nameOf(tab)));
  tab.addEventListener("keydown", (event) => {
    const index = tabs.indexOf(tab);
    const next = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: tabs.length - 1 }[event.key];
    if (next === undefined) return;
    event.preventDefault();
    select(nameOf(tabs[(next + tabs.length) % tabs.length]), { focus: true });
  });
}

// A pasted image goes to the open tool; pasted text stays where the user pastes it.
document.addEventListener("paste", (event) => {
  const files = pastedImages(event);
  if (!files.length) return;
  event.preventDefault();
  tools[active].paste(files);
});

const keyInput = $("api-key");
keyInput.value = savedKey();
$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  saveKey(keyInput.value.trim());
  reload();
});
$("forget-key").addEventListener("click", () => {
  keyInput.value = "";
  saveKey("");
  reload();
});

function reload() {
  loadModels();
  if (active === "search") tools.search.refresh();
}

// A link or a typed URL with #search opens that tab (the page is not reloaded for a new hash).
window.addEventListener("hashchange", () => {
  const name = location.hash.slice(1);
  if (tools[name] && name !== active) select(name);
});

const initial = location.hash.slice(1);
select(tools[initial] ? initial : "classify");
loadModels();
