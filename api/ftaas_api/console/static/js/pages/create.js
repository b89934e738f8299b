// Create a job: a model from /v1/models, a method, training and validation files, a suffix,
// seed and metadata, and the method's hyperparameters with their defaults. The API validates;
// its error lands next to the field its ``param`` names.

import { api, ApiError } from "../api.js";
import { field, h, notice, replace, setFieldError } from "../dom.js";
import { describe, hint, methods, parse } from "./schema.js";

const MAX_METADATA = 16;

function option(value, label, selected) {
  return h("option", { value, selected }, label);
}

export function render(main, { query }) {
  document.title = "New job · ftaas console";
  const model = h("select", { required: true });
  const method = h("select", {});
  const training = h("select", { required: true });
  const validation = h("select", {});
  const suffix = h("input", { type: "text", maxlength: 64, autocomplete: "off", placeholder: "e.g. support-bot" });
  const seed = h("input", { type: "text", inputmode: "numeric", autocomplete: "off", placeholder: "random" });
  const metadataRows = h("div", { class: "metadata" });
  const addMetadata = h("button", { type: "button", class: "small", id: "metadata-add", onclick: () => metadataRow() }, "Add metadata");
  const metadataError = h("p", { class: "field-error", id: "metadata-add-error", role: "alert", hidden: true });
  const hyperHost = h("div", { class: "grid hyper" });
  const formError = h("div");
  const submit = h("button", { type: "submit", class: "primary" }, "Create job");
  const controls = { model, training_file: training, validation_file: validation, suffix, seed, metadata: addMetadata };
  let hyperControls = {};

  function metadataRow() {
    if (metadataRows.children.length >= MAX_METADATA) return;
    const n = metadataRows.children.length + 1;
    const key = h("input", { type: "text", maxlength: 64, autocomplete: "off", "aria-label": `Metadata key ${n}`, placeholder: "key" });
    const value = h("input", { type: "text", maxlength: 512, autocomplete: "off", "aria-label": `Metadata value ${n}`, placeholder: "value" });
    const row = h("div", { class: "metadata-row" }, key, value, h("button", { type: "button", class: "small quiet", "aria-label": `Remove metadata ${n}`, onclick: () => row.remove() }, "Remove"));
    metadataRows.append(row);
    key.focus();
  }

  const form = h(
    "form",
    { class: "create", novalidate: true },
    h("section", { class: "card" }, h("h2", {}, "Model and data"), h("div", { class: "grid" },
      field("Model", model, "A base model, or one of your fine-tuned models."),
      field("Method", method),
      field("Training file", training, "A processed JSONL file, at least the examples the server requires."),
      field("Validation file", validation, "Optional: the validation loss is charted, and judges early stopping."),
    )),
    h("section", { class: "card" }, h("h2", {}, "Name and labels"), h("div", { class: "grid" },
      field("Suffix", suffix, "Part of the fine-tuned model's name: letters, digits, _ . -"),
      field("Seed", seed, "A whole number, for a reproducible run."),
    ), h("fieldset", {}, h("legend", {}, "Metadata"), h("p", { class: "hint" }, "Up to 16 key/value pairs; list jobs by them with metadata[key]=value."), metadataRows, addMetadata, metadataError)),
    h("section", { class: "card" }, h("h2", {}, "Hyperparameters"), h("p", { class: "hint" }, "Leave a field empty for its default; “auto” ones are resolved from the dataset when training starts."), hyperHost),
    formError,
    submit,
  );
  main.append(h("div", { class: "page-head" }, h("h1", {}, "New fine-tuning job")), form);

  let schemas = {};
  function showHyperparameters() {
    hyperControls = {};
    const properties = schemas[method.value] || {};
    replace(
      hyperHost,
      Object.entries(properties).map(([name, property]) => {
        const kind = describe(property);
        let control;
        if (kind.boolean && !kind.number && !kind.list) {
          control = h("select", {}, option("", `default (${String(kind.default)})`), kind.constants.map((c) => option(c, c)), option("true", "true"), option("false", "false"));
        } else {
          control = h("input", { type: "text", autocomplete: "off", spellcheck: "false", placeholder: kind.default === null || kind.default === undefined ? "" : String(kind.default) });
        }
        control.kind = kind;
        hyperControls[name] = control;
        return field(name, control, hint(kind));
      }),
    );
  }
  method.addEventListener("change", showHyperparameters);

  function controlFor(param) {
    if (!param) return null;
    const path = param.split(/[.[\]]+/).filter(Boolean);
    if (path[0] === "method" || path[0] === "hyperparameters") {
      const name = path.find((part) => hyperControls[part]);
      return name ? hyperControls[name] : method;
    }
    return controls[path[0]] || null;
  }

  function request() {
    const body = { model: model.value, training_file: training.value };
    if (validation.value) body.validation_file = validation.value;
    if (suffix.value.trim()) body.suffix = suffix.value.trim();
    if (seed.value.trim()) body.seed = /^\d+$/.test(seed.value.trim()) ? Number(seed.value.trim()) : seed.value.trim();
    const metadata = {};
    for (const row of metadataRows.children) {
      const [key, value] = row.querySelectorAll("input");
      if (key.value.trim()) metadata[key.value.trim()] = value.value;
    }
    if (Object.keys(metadata).length) body.metadata = metadata;
    const hyperparameters = {};
    for (const [name, control] of Object.entries(hyperControls)) {
      const value = parse(control.kind, control.value);
      if (value !== undefined) hyperparameters[name] = value;
    }
    body.method = { type: method.value };
    if (Object.keys(hyperparameters).length) body.method[method.value] = { hyperparameters };
    return body;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    for (const control of [...Object.values(controls), ...Object.values(hyperControls)]) setFieldError(control, "");
    replace(formError);
    submit.disabled = true;
    try {
      const job = await api("/v1/fine_tuning/jobs", { method: "POST", body: request() });
      window.location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (error) {
      const control = error instanceof ApiError && controlFor(error.param);
      if (control) {
        setFieldError(control, error.message);
        control.focus();
      } else {
        replace(formError, notice("error", `The job was not created: ${error.message}`));
      }
    } finally {
      submit.disabled = false;
    }
  });

  (async () => {
    try {
      const [formSchema, models, files] = await Promise.all([
        api("/console/api/job-form"),
        api("/v1/models"),
        api("/v1/files?limit=100&purpose=fine-tune"),
      ]);
      schemas = methods(formSchema);
      replace(method, Object.keys(schemas).map((name) => option(name, name)));
      showHyperparameters();
      const bases = models.data.filter((m) => m.owned_by === "ftaas");
      const tuned = models.data.filter((m) => m.owned_by !== "ftaas");
      replace(
        model,
        h("optgroup", { label: "Base models" }, bases.map((m) => option(m.id, m.id))),
        tuned.length ? h("optgroup", { label: "Your fine-tuned models" }, tuned.map((m) => option(m.id, m.id))) : null,
      );
      const usable = files.data.filter((f) => f.status === "processed");
      const wanted = query.get("training_file");
      replace(training, usable.map((f) => option(f.id, `${f.filename} (${f.id})`, f.id === wanted)));
      replace(validation, option("", "None"), usable.map((f) => option(f.id, `${f.filename} (${f.id})`)));
      if (!usable.length) replace(formError, notice("empty", "No dataset to train on yet. ", h("a", { href: "#/files" }, "Upload a JSONL file"), " first."));
      if (!bases.length) replace(formError, notice("error", "This server has no base model configured (FTAAS_MODELS): an administrator must add one."));
    } catch (error) {
      replace(formError, notice("error", `The form could not be prepared: ${error.message}`));
    }
  })();
}
