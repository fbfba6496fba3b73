// The page's only way out: fetch() to this server's public API, with the key the user saved.
// Paths are relative ("v1/models"), so the page works behind a proxy that adds a path prefix.

const KEY_STORAGE = "siglip-serve.api-key";

export function savedKey() {
  return localStorage.getItem(KEY_STORAGE) ?? "";
}

export function saveKey(key) {
  if (key) {
    localStorage.setItem(KEY_STORAGE, key);
  } else {
    localStorage.removeItem(KEY_STORAGE);
  }
}

// An error as the API words it: OpenAI's body {"error": {"message", "type", "param", "code"}}.
export class ApiError extends Error {
  constructor({ status, message, type = null, param = null, code = null }) {
    super(message);
    this.status = status;
    this.type = type;
    this.param = param;
    this.code = code;
  }
}

export async function api(method, path, body) {
  const headers = {};
  const key = savedKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (error) {
    throw new ApiError({ status: 0, message: `the server could not be reached (${error.message})` });
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = data && typeof data.error === "object" ? data.error : null;
    throw new ApiError({
      status: response.status,
      message: error?.message ?? (text || response.statusText),
      type: error?.type ?? null,
      param: error?.param ?? null,
      code: error?.code ?? null,
    });
  }
  return data;
}

// Shown verbatim: the message is the API's own; status and type say where it came from.
export function showError(element, error) {
  element.replaceChildren();
  const head = document.createElement("p");
  head.className = "error-head";
  const parts = [];
  if (error.status) parts.push(`HTTP ${error.status}`);
  if (error.status === 0) parts.push("No answer");
  if (error.type) parts.push(error.type);
  head.textContent = parts.join(" · ") || "Error";
  const message = document.createElement("p");
  message.className = "message";
  message.textContent = error.message;
  element.append(head, message);
  element.hidden = false;
}

// What the page itself has to say before any request (nothing chosen yet), in the same place.
export class Hint extends Error {}

export function clearError(element) {
  element.hidden = true;
  element.replaceChildren();
}

// Four decimals: the precision the chart, grid and heatmap show (and the browser tests compare);
// below 0.0001, two significant digits ("1.4e-20"), so that a tiny probability is not shown as zero.
export function formatScore(score) {
  return score !== 0 && Math.abs(score) < 1e-4 ? score.toExponential(1) : score.toFixed(4);
}

// Runs `work` with `button` disabled and marked busy; errors land in `errorElement`.
export async function withBusy(button, errorElement, work) {
  clearError(errorElement);
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    return await work();
  } catch (error) {
    if (error instanceof Hint) {
      showError(errorElement, { message: error.message, type: "nothing to send yet" });
      return undefined;
    }
    if (!(error instanceof ApiError)) throw error;
    showError(errorElement, error);
    return undefined;
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}
