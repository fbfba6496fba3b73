// Classify: one image (file, drop, paste or URL), labels, optional templates → POST /v1/classify.

import { Hint, api, formatScore, withBusy } from "./api.js";
import { createChips } from "./chips.js";
import { readImages, wireDropzone } from "./images.js";

const DEFAULT_LABELS = ["a red circle", "a blue square", "a green triangle", "a yellow star"];

export function setupClassify({ model }) {
  const $ = (id) => document.getElementById(id);
  const form = $("classify-form");
  const preview = $("classify-preview");
  const source = $("classify-source");
  const url = $("classify-url");
  const error = $("classify-error");
  const labels = createChips($("classify-labels"), $("classify-label-input"), DEFAULT_LABELS, "label");
  let image = null;  // {name, dataUrl} of the chosen file; a typed URL replaces it

  async function useFiles(files) {
    const [first] = await readImages(files);
    if (!first) return;
    image = first;
    url.value = "";
    preview.src = first.dataUrl;
    preview.alt = `The image to classify: ${first.name}`;
    preview.hidden = false;
    source.textContent = first.name;
  }

  wireDropzone($("classify-drop"), $("classify-file"), useFiles);
  url.addEventListener("input", () => {
    if (!url.value) return;
    image = null;
    preview.hidden = true;
    preview.removeAttribute("src");
    source.textContent = "";
  });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    withBusy($("classify-submit"), error, async () => {
      const input = image ? image.dataUrl : url.value.trim();
      if (!input) throw new Hint("Choose, drop or paste an image, or give its URL, first.");
      const templates = $("classify-templates").value.split("\n").map((line) => line.trim()).filter(Boolean);
      const body = {
        input: [input],
        labels: labels.values(),
        normalization: form.elements.normalization.value,
      };
      if (model()) body.model = model();
      if (templates.length) body.hypothesis_template = templates.length === 1 ? templates[0] : templates;
      // Labels are sent even when there are none: the API's own message says so.
      const response = await api("POST", "v1/classify", body);
      showChart(response.data[0].predictions);
    });
  });

  function showChart(predictions) {
    const rows = predictions.map(({ label, score }) => {
      const row = document.createElement("li");
      row.className = "chart-row";
      const name = document.createElement("span");
      name.className = "chart-label";
      name.textContent = label;
      const bar = document.createElement("span");
      bar.className = "chart-bar";
      bar.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.className = "chart-fill";
      fill.style.width = `${Math.min(100, Math.max(0, score * 100))}%`;
      bar.append(fill);
      const value = document.createElement("span");
      value.className = "chart-value";
      value.textContent = formatScore(score);
      row.append(name, bar, value);
      return row;
    });
    $("classify-chart").replaceChildren(...rows);
    $("classify-result").hidden = false;
  }

  return {
    paste(files) {
      useFiles(files);
    },
  };
}
