// Images come from files (picker, drop, paste) as data: URIs, which the API accepts as they are;
// previews show the same data URI, so the browser never loads an image from anywhere else.

export function isImage(file) {
  return file.type.startsWith("image/");
}

export function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

export async function readImages(files) {
  const images = [...files].filter(isImage);
  return Promise.all(images.map(async (file) => ({ name: file.name || "pasted image", dataUrl: await readAsDataUrl(file) })));
}

// Wires a drop zone and its file input to `onFiles(FileList-like)`.
export function wireDropzone(zone, input, onFiles) {
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    if (event.dataTransfer?.files?.length) onFiles(event.dataTransfer.files);
  });
  input.addEventListener("change", () => {
    if (input.files.length) onFiles(input.files);
    input.value = "";  // choosing the same file again fires change again
  });
}

export function pastedImages(event) {
  return [...(event.clipboardData?.files ?? [])].filter(isImage);
}
