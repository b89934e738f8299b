// One file and its dry-run report for a chosen model: every bad line, token statistics,
// truncation, duplicates, overlap with a validation file, and the first example as rendered.

import { api, ApiError } from "../api.js";
import { field, h, notice, replace, setFieldError } from "../dom.js";
import { bytes, count, metric, when } from "../format.js";
import { facts, table } from "../widgets.js";

/** The preview's text with its trained tokens (between ⟦ and ⟧) marked up as <mark>. */
function preview(text) {
  return text.split(/(⟦[^⟧]*⟧)/).map((part) => (part.startsWith("⟦") && part.endsWith("⟧") ? h("mark", {}, part.slice(1, -1)) : part));
}

function capped(shown, total, what) {
  return total > shown ? h("p", { class: "hint" }, `The first ${count(shown)} of ${count(total)} ${what} are listed.`) : null;
}

function findings(title, found) {
  const parts = [
    h("h3", {}, title),
    facts([
      ["Lines", count(found.n_lines)],
      ["Examples", count(found.n_examples)],
      ["Bad lines", count(found.n_errors)],
      ["Size", bytes(found.n_bytes)],
      ["Truncated", count(found.n_truncated)],
      ["Duplicates", count(found.n_duplicates)],
    ]),
  ];
  if (found.tokens) {
    const t = found.tokens;
    parts.push(
      h("h4", {}, "Tokens per example"),
      facts([
        ["Min", count(t.min)],
        ["Mean", metric(t.mean)],
        ["95th percentile", count(t.p95)],
        ["Max", count(t.max)],
        ["Total", count(t.total)],
        ["Trained per epoch", count(t.trained)],
      ]),
    );
  }
  if (found.errors.length) {
    parts.push(
      h("h4", {}, "Bad lines"),
      table(
        [
          ["Line", (e) => String(e.line)],
          ["Field", (e) => (e.field ? h("code", {}, e.field) : "—")],
          ["Problem", (e) => e.message],
        ],
        found.errors,
        "Lines that cannot train",
      ),
      capped(found.errors.length, found.n_errors, "bad lines"),
    );
  } else {
    parts.push(notice("info", "No bad lines: every line parses and renders with the model's chat template."));
  }
  if (found.truncated.length) {
    parts.push(
      h("h4", {}, "Longer than max_seq_length"),
      table(
        [
          ["Line", (e) => String(e.line)],
          ["Tokens", (e) => count(e.n_tokens)],
          ["Effect", (e) => (e.dropped ? "dropped: nothing left to train on" : "truncated")],
        ],
        found.truncated,
        "Truncated examples",
      ),
      capped(found.truncated.length, found.n_truncated, "truncated examples"),
    );
  }
  if (found.duplicates.length) {
    parts.push(
      h("h4", {}, "Duplicates"),
      table(
        [
          ["Line", (e) => String(e.line)],
          ["Same as line", (e) => String(e.first_line)],
        ],
        found.duplicates,
        "Duplicate examples",
      ),
      capped(found.duplicates.length, found.n_duplicates, "duplicates"),
    );
  }
  return parts;
}

function reportView(report) {
  const parts = [...findings("Training file", report)];
  if (report.validation) {
    parts.push(...findings("Validation file", report.validation));
    parts.push(h("h4", {}, "Overlap"), h("p", {}, `${count(report.n_overlapping)} validation examples also appear in the training file.`));
    if (report.overlapping.length) {
      parts.push(table([["Validation line", (e) => String(e.line)], ["Training line", (e) => String(e.first_line)]], report.overlapping, "Overlapping examples"));
    }
  }
  if (report.preview) {
    const p = report.preview;
    parts.push(
      h("h3", {}, `First example (line ${p.line}) as the model sees it`),
      h("p", { class: "hint" }, `${count(p.n_tokens)} tokens, ${count(p.n_trained_tokens)} trained (highlighted)${p.truncated ? "; truncated to max_seq_length" : ""}.`),
      h("pre", { class: "preview" }, preview(p.text)),
    );
  }
  return parts;
}

export function render(main, { parts: [, id] }) {
  document.title = `${id} · ftaas console`;
  const info = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const model = h("select", { required: true });
  const maxSeq = h("input", { type: "number", min: 16, max: 131072, step: 1, value: "2048", inputmode: "numeric" });
  const validation = h("select", {}, h("option", { value: "" }, "None"));
  const run = h("button", { type: "submit", class: "primary" }, "Run the dry run");
  const output = h("div", { class: "report", "aria-live": "polite" });
  const controls = { model, max_seq_length: maxSeq, validation_file: validation };
  const form = h(
    "form",
    { class: "card", novalidate: true },
    h("h2", {}, "Dry-run report"),
    h("p", { class: "hint" }, "Tokenises the file with the model's tokenizer, as training would, without spending GPU time."),
    h(
      "div",
      { class: "grid" },
      field("Model", model),
      field("max_seq_length", maxSeq, "Tokens an example is cut to (default 2048)."),
      field("Validation file", validation, "Optional: also checks it, and its overlap with this file."),
    ),
    run,
  );
  main.append(
    h("p", { class: "crumbs" }, h("a", { href: "#/files" }, "← All files")),
    h("div", { class: "page-head" }, h("h1", { class: "wrap" }, id), h("a", { class: "button primary", href: `#/new?training_file=${encodeURIComponent(id)}` }, "Train on this file")),
    info,
    form,
    output,
  );

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    for (const control of Object.values(controls)) setFieldError(control, "");
    const body = { model: model.value, max_seq_length: Number(maxSeq.value) };
    if (validation.value) body.validation_file = validation.value;
    run.disabled = true;
    replace(output, notice("info", "Tokenising… a large file takes a while."));
    try {
      const report = await api(`/v1/files/${encodeURIComponent(id)}/report`, { method: "POST", body });
      replace(output, h("section", { class: "card" }, h("h2", {}, `Report for ${report.model}`), reportView(report)));
    } catch (error) {
      const control = error instanceof ApiError && controls[error.param];
      if (control) setFieldError(control, error.message);
      replace(output, notice("error", `No report: ${error.message}`));
    } finally {
      run.disabled = false;
    }
  });

  (async () => {
    try {
      const [file, models, files] = await Promise.all([
        api(`/v1/files/${encodeURIComponent(id)}`),
        api("/v1/models"),
        api("/v1/files?limit=100&purpose=fine-tune"),
      ]);
      const examples = (await api(`/console/api/file-examples?id=${encodeURIComponent(id)}`)).data;
      replace(
        info,
        h(
          "section",
          { class: "card" },
          h("h2", { class: "wrap" }, file.filename),
          facts([
            ["Status", file.status],
            ["Purpose", file.purpose],
            ["Examples", count(examples[id])],
            ["Size", bytes(file.bytes)],
            ["Uploaded", when(file.created_at)],
            ["Expires", file.expires_at ? when(file.expires_at) : null],
          ]),
        ),
      );
      // The report tokenises with a base model's tokenizer: fine-tuned models share their base's.
      const bases = models.data.filter((m) => m.owned_by === "ftaas");
      replace(model, bases.map((m) => h("option", { value: m.id }, m.id)));
      if (!bases.length) replace(output, notice("error", "This server has no base model configured (FTAAS_MODELS), so no report can run."));
      validation.append(...files.data.filter((f) => f.id !== id).map((f) => h("option", { value: f.id }, `${f.filename} (${f.id})`)));
    } catch (error) {
      const missing = error instanceof ApiError && error.status === 404;
      replace(info, notice("error", missing ? `There is no file ${id} for this key. ` : `The file could not be loaded: ${error.message} `, h("a", { href: "#/files" }, "Back to the files")));
    }
  })();
}
