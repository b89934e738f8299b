// The jobs list: status, base model, method, created, progress, ETA and fine-tuned model,
// filterable by status, refreshed every few seconds.

import { api } from "../api.js";
import { field, h, notice, replace } from "../dom.js";
import { status as statusWords, when } from "../format.js";
import { poll } from "../poll.js";
import { STATUSES, badge, table } from "../widgets.js";
import { etaCell, fetchLatestMetrics, progressCell } from "./progress.js";

const PAGE = 100;

export function render(main, { query }) {
  document.title = "Jobs · ftaas console";
  let chosen = STATUSES.includes(query.get("status")) ? query.get("status") : "";
  // Filtering keeps the page (and the focus on the select): the address changes without a reload.
  const filter = h(
    "select",
    {
      onchange: () => {
        chosen = filter.value;
        history.replaceState(null, "", chosen ? `#/jobs?status=${chosen}` : "#/jobs");
        show();
      },
    },
    h("option", { value: "" }, "All statuses"),
    STATUSES.map((value) => h("option", { value, selected: value === chosen }, statusWords(value))),
  );
  const body = h("div", { class: "table-host" }, h("p", { class: "muted" }, "Loading jobs…"));
  const more = h("button", { type: "button", hidden: true, onclick: () => loadMore() }, "Load older jobs");
  main.append(
    h(
      "div",
      { class: "page-head" },
      h("h1", {}, "Fine-tuning jobs"),
      h("a", { class: "button primary", href: "#/new" }, "New job"),
    ),
    h("div", { class: "toolbar" }, field("Status", filter)),
    body,
    more,
  );

  // The newest page is refreshed; older pages, once loaded, stay as they were.
  let newest = [];
  const older = [];
  let newestHasMore = false;
  let olderHasMore = false;
  let jobs = [];
  let hasMore = false;
  const metrics = new Map();

  function merge() {
    const ids = new Set(newest.map((job) => job.id));
    jobs = [...newest, ...older.filter((job) => !ids.has(job.id))];
    hasMore = older.length ? olderHasMore : newestHasMore;
  }

  function show() {
    const shown = chosen ? jobs.filter((job) => job.status === chosen) : jobs;
    more.hidden = !hasMore;
    if (!jobs.length) {
      replace(body, notice("empty", "No fine-tuning jobs yet. Upload a dataset under ", h("a", { href: "#/files" }, "Files"), ", then ", h("a", { href: "#/new" }, "create a job"), "."));
      return;
    }
    if (!shown.length) {
      replace(body, notice("empty", `None of the ${jobs.length} jobs loaded is ${statusWords(chosen)}. `, h("a", { href: "#/jobs" }, "Show all jobs"), hasMore ? " or load older ones." : "."));
      return;
    }
    replace(
      body,
      table(
        [
          ["Status", (job) => badge(job.status)],
          ["Job", (job) => h("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.id)],
          ["Base model", (job) => job.model],
          ["Method", (job) => (job.method && job.method.type) || "supervised"],
          ["Created", (job) => h("time", { datetime: new Date(job.created_at * 1000).toISOString() }, when(job.created_at))],
          ["Progress", (job) => progressCell(job, metrics.get(job.id))],
          ["ETA", etaCell],
          ["Fine-tuned model", (job) => (job.fine_tuned_model ? h("code", { class: "wrap" }, job.fine_tuned_model) : h("span", { class: "muted" }, "—"))],
        ],
        shown,
        "Fine-tuning jobs, newest first",
      ),
    );
  }

  async function fetchPage(after) {
    const params = new URLSearchParams({ limit: String(PAGE) });
    if (after) params.set("after", after);
    return api(`/v1/fine_tuning/jobs?${params}`);
  }

  async function refresh() {
    try {
      const page = await fetchPage(null);
      newest = page.data;
      newestHasMore = page.has_more;
      merge();
      const running = jobs.filter((job) => job.status === "running" || job.status === "pausing");
      await Promise.all(running.map(async (job) => metrics.set(job.id, await fetchLatestMetrics(job.id))));
      show();
    } catch (error) {
      replace(body, notice("error", `The jobs could not be loaded: ${error.message}`));
    }
    return true; // new jobs may come from elsewhere (the SDK, another tab)
  }

  async function loadMore() {
    try {
      const page = await fetchPage(jobs[jobs.length - 1].id);
      older.push(...page.data);
      olderHasMore = page.has_more;
      merge();
      show();
    } catch (error) {
      replace(body, notice("error", `Older jobs could not be loaded: ${error.message}`));
    }
  }

  return poll(refresh, 4000);
}
