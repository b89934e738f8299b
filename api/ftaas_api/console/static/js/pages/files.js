// Files: drop (or choose) JSONL datasets to upload with a progress bar, and the list of files
// with their status, examples and size.

import { api, upload } from "../api.js";
import { h, notice, replace } from "../dom.js";
import { bytes, count, percent, when } from "../format.js";
import { confirmButton, statusLine, table } from "../widgets.js";

export function render(main) {
  document.title = "Files · ftaas console";
  const chooser = h("input", { type: "file", accept: ".jsonl,application/jsonl,application/x-ndjson", multiple: true, class: "visually-hidden", id: "file-input" });
  const bar = h("progress", { max: 1, value: 0, hidden: true, "aria-label": "Upload progress" });
  const said = statusLine();
  const zone = h(
    "div",
    { class: "dropzone", dataset: { drop: "files" } },
    h("p", { class: "drop-title" }, "Drop JSONL files here"),
    h("p", { class: "hint" }, "One training example per line, in the chat format (", h("code", {}, "messages"), ") or as ", h("code", {}, "prompt"), "/", h("code", {}, "completion"), " pairs. Each file is checked as it uploads."),
    h("label", { class: "button", for: chooser.id }, "…or choose files"),
    chooser,
    bar,
    said,
  );
  const list = h("div", { class: "table-host" }, h("p", { class: "muted" }, "Loading files…"));
  main.append(h("div", { class: "page-head" }, h("h1", {}, "Files")), zone, h("h2", {}, "Your files"), list);

  async function send(files) {
    for (const file of files) {
      bar.hidden = false;
      bar.value = 0;
      said.say("info", `Uploading ${file.name} (${bytes(file.size)})…`);
      try {
        const created = await upload(file, (fraction) => {
          bar.value = fraction;
          said.say("info", `Uploading ${file.name}: ${percent(fraction)}`);
        });
        said.say("ok", `Uploaded ${created.filename} as ${created.id}.`);
      } catch (error) {
        said.say("error", `${file.name} was not accepted: ${error.message}`);
      }
      bar.hidden = true;
      await refresh();
    }
  }

  chooser.addEventListener("change", () => {
    send([...chooser.files]);
    chooser.value = "";
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    send([...event.dataTransfer.files]);
  });

  async function remove(file) {
    try {
      await api(`/v1/files/${encodeURIComponent(file.id)}`, { method: "DELETE" });
      said.say("ok", `Deleted ${file.filename}.`);
    } catch (error) {
      said.say("error", `${file.filename} was not deleted: ${error.message}`);
    }
    await refresh();
  }

  async function refresh() {
    try {
      const page = await api("/v1/files?limit=100");
      const files = page.data;
      if (!files.length) {
        replace(list, notice("empty", "No files yet. Drop a JSONL dataset above to upload it; then dry-run it against a model and create a job."));
        return;
      }
      const ids = new URLSearchParams(files.map((file) => ["id", file.id]));
      const examples = (await api(`/console/api/file-examples?${ids}`)).data;
      replace(
        list,
        table(
          [
            ["Name", (file) => h("a", { href: `#/files/${encodeURIComponent(file.id)}`, class: "wrap" }, file.filename)],
            ["ID", (file) => h("code", {}, file.id)],
            ["Purpose", (file) => file.purpose],
            ["Status", (file) => file.status],
            ["Examples", (file) => count(examples[file.id])],
            ["Size", (file) => bytes(file.bytes)],
            ["Uploaded", (file) => when(file.created_at)],
            ["", (file) => confirmButton("Delete", "Confirm delete", () => remove(file), { class: "danger small", "aria-label": `Delete ${file.filename}` })],
          ],
          files,
          "Your files, newest first",
        ),
        page.has_more ? h("p", { class: "muted" }, "Showing the newest 100 files.") : null,
      );
    } catch (error) {
      replace(list, notice("error", `The files could not be loaded: ${error.message}`));
    }
  }

  refresh();
}
