// One job: its facts, hyperparameters (and what each "auto" became), live training curves,
// events, checkpoints with their adapters, results (files, samples, retention, manifest), and
// the pause / resume / cancel moves its status allows. Polls until the job is finished.

import { api, ApiError, download, fetchBlob } from "../api.js";
import { LineChart } from "../chart.js";
import { h, notice, replace } from "../dom.js";
import { bytes, clock, count, metric, setting, when } from "../format.js";
import { poll } from "../poll.js";
import { ACTIVE, badge, busy, confirmButton, facts, jsonView, statusLine, table } from "../widgets.js";
import { curve, keysEndingWith, retention, sampleParts } from "./metrics.js";
import { etaCell, progressCell } from "./progress.js";

// Which statuses allow each move (the server's lifecycle decides; this only greys buttons out).
const ALLOWED = {
  pause: new Set(["queued", "running"]),
  resume: new Set(["paused"]),
  cancel: ACTIVE,
};
const DONE_SAYING = {
  pause: "Pausing: a running job saves a checkpoint and frees its GPU first.",
  resume: "Resumed: the job is back in the queue and continues from its checkpoint.",
  cancel: "Cancelled.",
};
const MAX_SAMPLES = 50;

function fileLink(fileId) {
  return h("a", { href: `#/files/${encodeURIComponent(fileId)}` }, h("code", {}, fileId));
}

function section(title, ...children) {
  const heading = h("h2", {}, title);
  return h("section", { class: "card" }, heading, ...children);
}

export function render(main, { parts: [, id] }) {
  const base = `/v1/fine_tuning/jobs/${encodeURIComponent(id)}`;
  document.title = `${id} · ftaas console`;

  const events = [];
  const seen = new Set();
  const checkpointIds = new Set();
  let job = null;
  let resultsLoaded = false;

  const said = statusLine();
  const statusHost = h("span", { class: "head-status" });
  const buttons = {
    pause: h("button", { type: "button", onclick: () => move("pause") }, "Pause"),
    resume: h("button", { type: "button", onclick: () => move("resume") }, "Resume"),
    cancel: confirmButton("Cancel", "Confirm cancel", () => move("cancel"), { class: "danger" }),
  };
  const adapterButton = h("button", { type: "button", class: "primary", hidden: true, onclick: () => save(adapterButton, `${base}/adapter`, `${id}-adapter.tar.gz`) }, "Download adapter");
  const problem = h("div");
  const overview = h("div");
  const lossChart = new LineChart("loss", "Loss", "loss");
  const rewardCharts = new Map();
  const charts = h("div", { class: "charts" }, lossChart.element);
  const hyperparameters = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const feed = h("ol", { class: "events", "aria-label": "Events, newest first" });
  const feedCount = h("p", { class: "muted" });
  const checkpoints = h("div", { class: "checkpoints" }, h("p", { class: "muted" }, "Loading…"));
  const results = h("div", {}, h("p", { class: "muted" }, "Results appear once the job has succeeded."));

  main.append(
    h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "← All jobs")),
    h(
      "div",
      { class: "page-head" },
      h("div", {}, h("h1", { class: "wrap" }, id), statusHost),
      h("div", { class: "actions", role: "group", "aria-label": "Job actions" }, buttons.pause, buttons.resume, buttons.cancel, adapterButton),
    ),
    said,
    problem,
    section("Overview", overview),
    section("Training curves", charts),
    h(
      "div",
      { class: "columns" },
      section("Hyperparameters", hyperparameters),
      section("Events", feedCount, feed),
    ),
    section("Checkpoints", checkpoints),
    section("Results", results),
  );

  async function save(button, path, filename) {
    try {
      await busy(button, () => download(path, filename));
      said.say("ok", `Downloaded ${filename}.`);
    } catch (error) {
      said.say("error", `The download failed: ${error.message}`);
    }
  }

  async function move(verb) {
    try {
      await busy(buttons[verb], () => api(`${base}/${verb}`, { method: "POST" }));
      said.say("ok", DONE_SAYING[verb]);
    } catch (error) {
      said.say("error", error.message);
    }
    await refresh();
  }

  function showJob() {
    replace(statusHost, badge(job.status));
    for (const [verb, allowed] of Object.entries(ALLOWED)) {
      buttons[verb].disabled = !allowed.has(job.status);
      buttons[verb].title = allowed.has(job.status) ? "" : `A ${job.status} job cannot be ${verb === "cancel" ? "cancelled" : `${verb}d`}.`;
    }
    adapterButton.hidden = job.status !== "succeeded";
    replace(problem, job.error && job.error.message ? notice("error", `The job failed: ${job.error.message}`, job.error.code ? ` (${job.error.code})` : "") : null);
    const metadata = Object.entries(job.metadata || {});
    const metrics = [...events].reverse().find((event) => event.type === "metrics" && event.data.total_steps);
    replace(
      overview,
      facts([
        ["Base model", job.model],
        ["Method", (job.method && job.method.type) || "supervised"],
        ["Fine-tuned model", job.fine_tuned_model ? h("code", { class: "wrap" }, job.fine_tuned_model) : null],
        ["Created", when(job.created_at)],
        ["Finished", job.finished_at ? when(job.finished_at) : null],
        ["Progress", progressCell(job, metrics && metrics.data)],
        ["ETA", ACTIVE.has(job.status) ? etaCell(job) : null],
        ["Queue position", job.queue_position !== undefined ? count(job.queue_position + 1) : null],
        ["Training file", fileLink(job.training_file)],
        ["Validation file", job.validation_file ? fileLink(job.validation_file) : null],
        ["Trained tokens", job.trained_tokens ? count(job.trained_tokens) : null],
        ["Estimated tokens", job.estimated_trained_tokens ? count(job.estimated_trained_tokens) : null],
        ["Seed", String(job.seed)],
        ["Suffix", job.suffix],
        ["Metadata", metadata.length ? h("ul", { class: "plain" }, metadata.map(([key, value]) => h("li", {}, h("code", {}, key), " = ", value))) : null],
      ]),
    );
    const settings = Object.entries(job.hyperparameters || {}).filter(([name]) => name !== "auto_resolved");
    const auto = (job.hyperparameters && job.hyperparameters.auto_resolved) || {};
    replace(
      hyperparameters,
      h(
        "dl",
        { class: "settings" },
        settings.map(([name, value]) =>
          h(
            "div",
            {},
            h("dt", {}, h("code", {}, name)),
            h(
              "dd",
              {},
              setting(value),
              auto[name] ? h("span", { class: "hint" }, `“auto” became ${auto[name]}`) : null,
              !auto[name] && value === "auto" ? h("span", { class: "hint" }, "decided when training starts") : null,
            ),
          ),
        ),
      ),
    );
  }

  async function fetchNewEvents() {
    const fresh = [];
    let after = null;
    for (;;) {
      const query = new URLSearchParams({ limit: events.length ? "100" : "1000" });
      if (after) query.set("after", after);
      const page = await api(`${base}/events?${query}`);
      const unseen = page.data.filter((event) => !seen.has(event.id));
      fresh.push(...unseen);
      if (unseen.length < page.data.length || !page.has_more || !page.data.length) break;
      after = page.data[page.data.length - 1].id;
    }
    fresh.reverse();
    for (const event of fresh) seen.add(event.id);
    events.push(...fresh);
    return fresh;
  }

  function showEvents(fresh) {
    for (const event of fresh) {
      feed.prepend(
        h(
          "li",
          { class: `level-${event.level}` },
          h("time", { datetime: new Date(event.created_at * 1000).toISOString(), title: when(event.created_at) }, clock(event.created_at)),
          event.level !== "info" ? h("span", { class: "level" }, event.level) : null,
          h("span", { class: "message" }, event.message),
        ),
      );
    }
    feedCount.textContent = events.length ? `${count(events.length)} events, newest first.` : "No events yet.";
    lossChart.update([
      { name: "training loss", key: "train", points: curve(events, "train_loss") },
      { name: "validation loss", key: "valid", points: curve(events, "valid_loss") },
    ]);
    for (const [suffix, title] of [
      ["rewards/margins", "Reward margin"],
      ["rewards/accuracies", "Reward accuracy"],
    ]) {
      const keys = keysEndingWith(events, suffix);
      if (!keys.length) continue;
      if (!rewardCharts.has(suffix)) {
        const chart = new LineChart(suffix.replace("/", "-"), title, suffix.split("/")[1]);
        rewardCharts.set(suffix, chart);
        charts.append(chart.element);
      }
      rewardCharts.get(suffix).update(keys.map((key, i) => ({ name: key, key: `series${i}`, points: curve(events, key) })));
    }
  }

  function checkpointView(checkpoint) {
    const m = checkpoint.metrics || {};
    const headline = [
      `Step ${checkpoint.step_number}`,
      m.train_loss !== undefined ? `training loss ${metric(m.train_loss)}` : null,
      m.valid_loss !== undefined ? `validation loss ${metric(m.valid_loss)}` : null,
    ].filter(Boolean);
    const filename = `${checkpoint.id}-adapter.tar.gz`;
    const button = h("button", { type: "button", onclick: () => save(button, `${base}/checkpoints/${encodeURIComponent(checkpoint.id)}/adapter`, filename) }, "Download adapter");
    return h(
      "details",
      { class: "checkpoint", dataset: { checkpoint: checkpoint.id } },
      h("summary", {}, h("span", {}, headline.join(" · ")), h("span", { class: "muted" }, when(checkpoint.created_at))),
      facts([
        ["Checkpoint", h("code", { class: "wrap" }, checkpoint.id)],
        ["Model name", h("code", { class: "wrap" }, checkpoint.fine_tuned_model_checkpoint)],
        ...Object.entries(m)
          .filter(([key]) => key !== "step")
          .map(([key, value]) => [key.replaceAll("_", " "), metric(value)]),
      ]),
      button,
    );
  }

  async function showCheckpoints() {
    const page = await api(`${base}/checkpoints?limit=100`);
    if (!page.data.length) {
      replace(checkpoints, h("p", { class: "muted" }, ACTIVE.has(job.status) ? "No checkpoint yet: the job saves one every save_steps steps and at each epoch's end." : "This job saved no checkpoint."));
      return;
    }
    if (!checkpointIds.size) checkpoints.replaceChildren();
    // Newest first; views already shown stay, so one a reader opened stays open.
    for (const checkpoint of [...page.data].reverse()) {
      if (checkpointIds.has(checkpoint.id)) continue;
      checkpointIds.add(checkpoint.id);
      checkpoints.prepend(checkpointView(checkpoint));
    }
  }

  async function resultFile(fileId) {
    const file = await api(`/v1/files/${encodeURIComponent(fileId)}`);
    const button = h("button", { type: "button", onclick: () => save(button, `/v1/files/${encodeURIComponent(fileId)}/content`, file.filename) }, "Download");
    return { file, row: h("li", {}, h("span", { class: "wrap" }, file.filename), h("span", { class: "muted" }, ` ${bytes(file.bytes)} `), button) };
  }

  async function samplesView(file) {
    const text = await (await fetchBlob(`/v1/files/${encodeURIComponent(file.id)}/content`)).text();
    const rows = text
      .split("\n")
      .filter((line) => line.trim())
      .slice(0, MAX_SAMPLES)
      .map((line) => {
        try {
          return JSON.parse(line);
        } catch {
          return { prompt: line };
        }
      });
    const samples = rows.map(sampleParts);
    const known = samples.some((sample) => sample.base !== undefined || sample.tuned !== undefined);
    return h(
      "div",
      { class: "samples" },
      h("h3", {}, "Samples: base vs fine-tuned"),
      h("p", { class: "hint" }, `Greedy answers to validation prompts${rows.length === MAX_SAMPLES ? ` (the first ${MAX_SAMPLES})` : ""}.`),
      known
        ? table(
            [
              ["Prompt", (sample) => sample.prompt ?? "—"],
              ["Base model", (sample) => h("span", { class: "answer" }, sample.base ?? "—")],
              ["Fine-tuned", (sample) => h("span", { class: "answer" }, sample.tuned ?? "—")],
              ...(samples.some((sample) => sample.reference !== undefined) ? [["Reference", (sample) => sample.reference ?? "—"]] : []),
            ],
            samples,
            "Samples",
          )
        : rows.map((row) => jsonView(row)),
    );
  }

  async function showResults() {
    const parts = [];
    const files = await Promise.all(job.result_files.map(resultFile));
    if (files.length) parts.push(h("h3", {}, "Result files"), h("ul", { class: "plain files" }, files.map((f) => f.row)));
    for (const { file } of files) {
      if (/samples[^/]*\.jsonl$/i.test(file.filename)) parts.push(await samplesView(file));
    }
    let manifest = null;
    if (job.status === "succeeded") {
      try {
        manifest = await api(`${base}/manifest`);
      } catch (error) {
        if (!(error instanceof ApiError) || error.status !== 400) throw error;
      }
    }
    const kept = retention(events, manifest);
    if (kept) {
      parts.push(
        h("h3", {}, "Retention"),
        h("p", { class: "hint" }, "How far the fine-tuned model moved from its base on general prompts (lower is closer)."),
        kept.warning ? notice("warn", "Above the warning level: the model may have forgotten some of what it knew. Raise replay, or lower the epochs or the learning rate.") : null,
        facts(kept.figures.map(([key, value]) => [key.replaceAll("_", " "), typeof value === "number" ? metric(value) : jsonView(value)])),
      );
    }
    if (manifest) parts.push(h("details", { class: "manifest" }, h("summary", {}, "Reproducibility manifest"), jsonView(manifest)));
    replace(results, parts.length ? parts : h("p", { class: "muted" }, job.status === "succeeded" ? "This job produced no result files." : "No results: the job did not succeed."));
  }

  let queue = Promise.resolve(true);
  function refresh() {
    queue = queue.then(refreshNow, refreshNow);
    return queue;
  }

  async function refreshNow() {
    try {
      job = await api(base);
      const fresh = await fetchNewEvents();
      showJob();
      showEvents(fresh);
      await showCheckpoints();
      if (!ACTIVE.has(job.status) && !resultsLoaded) {
        await showResults();
        resultsLoaded = true;
      }
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        main.replaceChildren(notice("error", `There is no job ${id} for this key. `, h("a", { href: "#/jobs" }, "Back to the jobs")));
        return false;
      }
      said.say("error", `Could not refresh the job: ${error.message}. Retrying…`);
    }
    // Finished: one last round has loaded the results (a failed one is retried).
    return !job || ACTIVE.has(job.status) || !resultsLoaded;
  }

  return poll(refresh, 1500);
}
