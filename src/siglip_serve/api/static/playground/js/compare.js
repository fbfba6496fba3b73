// Compare: several images × several texts → a heatmap of SigLIP probabilities.
// One POST /v1/rerank per image (the image as the query, the texts as documents): its relevance_score
// is exactly the pair's sigmoid(t·cos + b). /v1/classify with the template "{}" gives the same number
// only up to ~1e-6, because it re-normalizes the (single-template) ensemble.

import { Hint, api, formatScore, withBusy } from "./api.js";
import { createChips } from "./chips.js";
import { readImages, wireDropzone } from "./images.js";

const DEFAULT_TEXTS = ["a red circle", "a blue square", "a green triangle"];

export function setupCompare({ model }) {
  const $ = (id) => document.getElementById(id);
  const texts = createChips($("compare-texts"), $("compare-text-input"), DEFAULT_TEXTS, "text");
  const images = [];  // {name, dataUrl}

  function renderImages() {
    $("compare-images").replaceChildren(...images.map((image, index) => {
      const item = document.createElement("li");
      item.className = "thumb-item";
      const picture = document.createElement("img");
      picture.src = image.dataUrl;
      picture.alt = image.name;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "chip-remove";
      remove.textContent = "×";
      remove.setAttribute("aria-label", `Remove image: ${image.name}`);
      remove.addEventListener("click", () => {
        images.splice(index, 1);
        renderImages();
      });
      item.append(picture, remove);
      return item;
    }));
  }

  async function addImages(files) {
    images.push(...await readImages(files));
    renderImages();
  }

  wireDropzone($("compare-drop"), $("compare-file"), addImages);

  $("compare-form").addEventListener("submit", (event) => {
    event.preventDefault();
    withBusy($("compare-submit"), $("compare-error"), async () => {
      const documents = texts.values();
      const shown = [...images];
      if (!shown.length) throw new Hint("Choose, drop or paste at least one image first.");
      const rows = await Promise.all(shown.map(async (image) => {
        const body = { query: { image: image.dataUrl }, documents };
        if (model()) body.model = model();
        const { results } = await api("POST", "v1/rerank", body);
        const scores = new Array(documents.length);
        for (const { index, relevance_score: score } of results) scores[index] = score;
        return scores;
      }));
      showHeatmap(shown, documents, rows);
    });
  });

  function showHeatmap(shown, documents, rows) {
    const head = document.createElement("tr");
    const corner = document.createElement("th");
    corner.scope = "col";
    corner.textContent = "image";
    head.append(corner, ...documents.map((text) => {
      const cell = document.createElement("th");
      cell.scope = "col";
      cell.textContent = text;
      return cell;
    }));
    $("heatmap").tHead.replaceChildren(head);
    $("heatmap").tBodies[0].replaceChildren(...shown.map((image, i) => {
      const row = document.createElement("tr");
      const header = document.createElement("th");
      header.scope = "row";
      const picture = document.createElement("img");
      picture.src = image.dataUrl;
      picture.alt = image.name;
      header.append(picture);
      row.append(header, ...rows[i].map((score) => {
        const cell = document.createElement("td");
        cell.textContent = formatScore(score);
        // Light (0) to dark blue (1); text turns white where the background is dark.
        cell.style.backgroundColor = `hsl(215 80% ${Math.round(97 - score * 62)}%)`;
        if (score > 0.55) cell.classList.add("dark");
        return cell;
      }));
      return row;
    }));
    $("compare-result").hidden = false;
  }

  return {
    paste(files) {
      addImages(files);
    },
  };
}
