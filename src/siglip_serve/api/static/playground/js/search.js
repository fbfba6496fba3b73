// Search: pick or create a collection, add images by dropping them (POST .../items), and query it by
// text or image (POST .../search with thumbnails: each result's ≤128 px JPEG stored at ingest).

import { Hint, api, clearError, formatScore, showError, withBusy } from "./api.js";
import { readImages, wireDropzone } from "./images.js";

export function setupSearch({ model }) {
  const $ = (id) => document.getElementById(id);
  const select = $("collection");
  const error = $("search-error");
  const ingestStatus = $("ingest-status");
  const queryPreview = $("query-preview");
  let queryImage = null;

  async function loadCollections(wanted) {
    clearError(error);
    try {
      const { data } = await api("GET", "v1/collections");
      const previous = wanted ?? select.value;
      select.replaceChildren(...data.map((collection) => {
        const option = document.createElement("option");
        option.value = collection.name;
        option.textContent = `${collection.name} (${collection.count} items, ${collection.model})`;
        return option;
      }));
      if (!data.length) {
        const option = document.createElement("option");
        option.value = "";
        option.textContent = "no collections yet: create one";
        select.append(option);
      } else if (data.some((collection) => collection.name === previous)) {
        select.value = previous;
      }
    } catch (failure) {
      showError(error, failure);
    }
  }

  $("collection-refresh").addEventListener("click", () => loadCollections());

  $("create-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const button = event.submitter ?? $("create-form").querySelector("button");
    withBusy(button, error, async () => {
      const name = $("new-collection").value.trim();
      const body = { name };
      if (model()) body.model = model();
      await api("POST", "v1/collections", body);
      $("new-collection").value = "";
      await loadCollections(name);
    });
  });

  // Ids are the file names, made unique within one drop: the API refuses an id twice in one request.
  function itemIds(images) {
    const seen = new Map();
    return images.map(({ name }) => {
      const count = seen.get(name) ?? 0;
      seen.set(name, count + 1);
      return count ? `${name} (${count + 1})` : name;
    });
  }

  async function ingest(files) {
    const images = await readImages(files);
    if (!images.length) return;
    clearError(error);
    const collection = select.value;
    if (!collection) {
      showError(error, { message: "Create a collection first (New collection), then add images to it.", type: "nothing to send yet" });
      return;
    }
    ingestStatus.textContent = `Adding ${images.length} image(s) to ${collection}…`;
    try {
      const ids = itemIds(images);
      const items = images.map((image, i) => ({ id: ids[i], image: image.dataUrl, metadata: { filename: image.name } }));
      const response = await api("POST", `v1/collections/${encodeURIComponent(collection)}/items`, { items });
      const failures = response.data.filter((item) => item.status === "failed");
      ingestStatus.textContent = `Stored ${response.upserted} of ${items.length} image(s) in ${collection}.`;
      if (failures.length) {
        const first = failures[0].error;
        showError(error, { type: first.type, message: failures.map((item) => item.error.message).join("\n") });
      }
      await loadCollections(collection);
    } catch (failure) {
      ingestStatus.textContent = "";
      showError(error, failure);
    }
  }

  wireDropzone($("ingest-drop"), $("ingest-file"), ingest);

  async function useQueryImage(files) {
    const [first] = await readImages(files);
    if (!first) return;
    queryImage = first;
    queryPreview.src = first.dataUrl;
    queryPreview.alt = `The query image: ${first.name}`;
    queryPreview.hidden = false;
  }

  wireDropzone($("query-image-box"), $("query-file"), useQueryImage);

  const form = $("search-form");
  form.addEventListener("change", () => {
    const byImage = form.elements["query-kind"].value === "image";
    $("query-image-box").hidden = !byImage;
    $("query-text-box").hidden = byImage;
  });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    withBusy($("search-submit"), error, async () => {
      const byImage = form.elements["query-kind"].value === "image";
      if (!select.value) throw new Hint("Create a collection and add images to it first.");
      if (byImage && !queryImage) throw new Hint("Choose, drop or paste a query image first.");
      const query = byImage ? { image: queryImage?.dataUrl ?? "" } : { text: $("query-text").value };
      const body = { query, top_k: Number($("top-k").value) || 12, with_thumbnails: true };
      const response = await api("POST", `v1/collections/${encodeURIComponent(select.value)}/search`, body);
      showResults(response.data);
    });
  });

  function showResults(results) {
    const tiles = results.map((result) => {
      const tile = document.createElement("li");
      tile.className = "tile";
      const figure = document.createElement("figure");
      let picture;
      if (result.thumbnail) {
        picture = document.createElement("img");
        picture.src = result.thumbnail;
        picture.alt = result.id;
      } else {  // a text item, or one stored before thumbnails existed
        picture = document.createElement("div");
        picture.className = "placeholder";
        picture.setAttribute("role", "img");
        picture.setAttribute("aria-label", `${result.id} (no thumbnail stored)`);
        picture.textContent = "no thumbnail";
      }
      picture.classList.add("thumb");
      const caption = document.createElement("figcaption");
      const id = document.createElement("span");
      id.className = "tile-id";
      id.textContent = result.id;
      const score = document.createElement("span");
      score.className = "tile-score";
      score.textContent = formatScore(result.score);
      caption.append(id, score);
      figure.append(picture, caption);
      tile.append(figure);
      return tile;
    });
    $("search-grid").replaceChildren(...tiles);
    $("search-result").hidden = false;
  }

  return {
    refresh: () => loadCollections(),
    paste(files) {
      if (form.elements["query-kind"].value === "image") useQueryImage(files);
      else ingest(files);
    },
  };
}
