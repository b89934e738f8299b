// Small pieces the pages share: status badges, tables, key/value lists, two-step buttons.

import { h, replace } from "./dom.js";
import { status as statusWords } from "./format.js";

export const ACTIVE = new Set(["validating_files", "queued", "running", "pausing", "paused"]);
export const STATUSES = ["validating_files", "queued", "running", "pausing", "paused", "succeeded", "failed", "cancelled"];

export function badge(status) {
  return h("span", { class: ["badge", `status-${status}`] }, statusWords(status));
}

/** A table of ``rows``; each column is [heading, row => cell content]. The heading also labels
 *  each cell (data-label), so on a narrow screen a row reads as a card of labelled fields. */
export function table(columns, rows, caption) {
  return h(
    "table",
    { class: "data" },
    caption ? h("caption", { class: "visually-hidden" }, caption) : null,
    h("thead", {}, h("tr", {}, columns.map(([heading]) => h("th", { scope: "col" }, heading)))),
    h(
      "tbody",
      {},
      rows.map((row) => h("tr", {}, columns.map(([heading, cell]) => h("td", { dataset: { label: heading } }, cell(row))))),
    ),
  );
}

/** A definition list of [term, description] pairs, leaving out empty descriptions. */
export function facts(pairs) {
  return h(
    "dl",
    { class: "facts" },
    pairs
      .filter(([, value]) => value !== undefined && value !== null && value !== "")
      .map(([term, value]) => h("div", {}, h("dt", {}, term), h("dd", {}, value))),
  );
}

/** Any JSON value as nested lists of text (a manifest, an unknown result row). */
export function jsonView(value) {
  if (value === null || typeof value !== "object") return h("code", {}, JSON.stringify(value));
  const entries = Array.isArray(value) ? value.map((v, i) => [String(i), v]) : Object.entries(value);
  if (!entries.length) return h("code", {}, Array.isArray(value) ? "[]" : "{}");
  return h(
    "dl",
    { class: "json" },
    entries.map(([key, v]) => h("div", {}, h("dt", {}, key), h("dd", {}, typeof v === "string" ? v : jsonView(v)))),
  );
}

/** A button that asks once more before ``action`` (no dialog: the second click confirms). */
export function confirmButton(label, confirmLabel, action, attrs = {}) {
  let armed = null;
  const button = h("button", {
    type: "button",
    ...attrs,
    onclick: async () => {
      if (!armed) {
        button.textContent = confirmLabel;
        button.classList.add("armed");
        armed = setTimeout(disarm, 5000);
        return;
      }
      disarm();
      await action();
    },
  }, label);
  function disarm() {
    clearTimeout(armed);
    armed = null;
    button.textContent = label;
    button.classList.remove("armed");
  }
  return button;
}

/** A live region for what an action did: ``say(kind, text)``. */
export function statusLine() {
  const line = h("p", { class: "status-line", role: "status", "aria-live": "polite" });
  line.say = (kind, text) => {
    line.className = `status-line ${kind}`;
    replace(line, text);
  };
  return line;
}

/** While ``work`` runs, ``button`` is disabled and says so. */
export async function busy(button, work) {
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    return await work();
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}
