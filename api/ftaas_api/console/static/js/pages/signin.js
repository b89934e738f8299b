// Sign in with an API key. The key is checked with one API call, then kept in this tab's
// sessionStorage only. The input has no name and the CSP forbids form submission, so the key
// can never end up in a URL even if this script failed to load.

import { api, auth, ApiError } from "../api.js";
import { field, h, notice, setFieldError } from "../dom.js";

export function render(main, { reason, done }) {
  document.title = "Sign in · ftaas console";
  const key = h("input", { type: "password", autocomplete: "off", spellcheck: "false", required: true, placeholder: "ftk_…" });
  const submit = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h(
    "form",
    { class: "card signin", novalidate: true },
    h("h1", {}, "Sign in"),
    h("p", {}, "Use an API key of your tenant (an administrator creates one with ", h("code", {}, "ftaas keys create"), ")."),
    reason ? notice("error", reason) : null,
    field("API key", key, "Kept only in this browser tab, and forgotten when you close it or sign out."),
    submit,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const value = key.value.trim();
    setFieldError(key, value ? "" : "Enter your API key.");
    if (!value) return key.focus();
    submit.disabled = true;
    try {
      await api("/v1/models", { key: value });
      auth.signIn(value);
      done();
    } catch (error) {
      const refused = error instanceof ApiError && error.status === 401;
      setFieldError(key, refused ? "The server does not know this key: check it, or ask for a new one." : error.message);
      key.focus();
    } finally {
      submit.disabled = false;
    }
  });
  main.replaceChildren(form);
  key.focus();
}
