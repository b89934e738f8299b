// Every call is a plain API call with the key as a Bearer header. The key lives only in this
// tab's sessionStorage: never in a URL, a cookie or a log, and gone when the tab closes.

const KEY = "ftaas.apiKey";

export const auth = {
  get key() {
    return sessionStorage.getItem(KEY);
  },
  signIn(key) {
    sessionStorage.setItem(KEY, key);
  },
  signOut() {
    sessionStorage.removeItem(KEY);
  },
};

/** An API error as OpenAI's body gives it: message, type, param, code, and the HTTP status. */
export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `The server answered ${status}.`);
    this.status = status;
    this.param = error.param || null;
    this.code = error.code || null;
  }
}

/** Called with the error when the key is refused (401), so the console can ask for another. */
let onUnauthorized = () => {};
export function whenUnauthorized(handler) {
  onUnauthorized = handler;
}

function headers(extra) {
  return { Authorization: `Bearer ${auth.key}`, ...extra };
}

async function failure(response, signedIn = true) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON (a proxy's error page): the status alone says what happened.
  }
  const error = new ApiError(response.status, body);
  if (response.status === 401 && signedIn) onUnauthorized(error);
  return error;
}

/** The JSON of ``method path``, sending ``body`` as JSON; throws ApiError on a non-2xx answer.
 *  ``key`` tries a key that is not signed in yet. */
export async function api(path, { method = "GET", body, key } = {}) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (key !== undefined) init.headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) init.body = JSON.stringify(body);
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, { error: { message: "The API cannot be reached. Check that the server is running, then retry." } });
  }
  if (!response.ok) throw await failure(response, key === undefined);
  return response.json();
}

/** Every object of a list endpoint, following ``after`` cursors up to ``cap`` objects. */
export async function listAll(path, { limit = 100, cap = 10000 } = {}) {
  const items = [];
  let after = null;
  for (;;) {
    const query = new URLSearchParams({ limit: String(limit) });
    if (after) query.set("after", after);
    const page = await api(`${path}?${query}`);
    items.push(...page.data);
    if (!page.has_more || !page.data.length || items.length >= cap) return items;
    after = page.data[page.data.length - 1].id;
  }
}

/** The bytes at ``path`` (with the key), as a Blob. */
export async function fetchBlob(path) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw await failure(response);
  return response.blob();
}

/** Download ``path`` as a file named ``filename``: fetched with the key, then saved. */
export async function download(path, filename) {
  const blob = await fetchBlob(path);
  const url = URL.createObjectURL(blob);
  const link = Object.assign(document.createElement("a"), { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** Upload ``file`` for fine-tuning; ``onProgress`` gets the fraction sent. Resolves with the
 *  file object. (XMLHttpRequest, because fetch reports no upload progress.) */
export function upload(file, onProgress) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", "/v1/files");
    request.setRequestHeader("Authorization", `Bearer ${auth.key}`);
    request.responseType = "json";
    request.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    request.addEventListener("load", () => {
      if (request.status >= 200 && request.status < 300) return resolve(request.response);
      const error = new ApiError(request.status, request.response);
      if (request.status === 401) onUnauthorized(error);
      reject(error);
    });
    request.addEventListener("error", () =>
      reject(new ApiError(0, { error: { message: "The upload was interrupted. Check the connection, then retry." } })),
    );
    const form = new FormData();
    form.append("purpose", "fine-tune");
    form.append("file", file, file.name);
    request.send(form);
  });
}
