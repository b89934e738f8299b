// How far a job has come, from its newest metrics event: step of total steps, and the ETA.

import { api } from "../api.js";
import { h } from "../dom.js";
import { fromNow, percent, when } from "../format.js";

/** The newest metrics event's data among ``events`` (newest first), or null. */
function latestMetrics(events) {
  const found = events.find((event) => event.type === "metrics" && event.data && event.data.step !== undefined);
  return found ? found.data : null;
}

/** The newest metrics of a running job: one small page of its events. */
export async function fetchLatestMetrics(jobId) {
  const page = await api(`/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}/events?limit=50`);
  return latestMetrics(page.data);
}

/** A progress bar with "step of total" for ``job`` given its newest ``metrics``. */
export function progressCell(job, metrics) {
  if (job.status === "succeeded") return h("span", { class: "muted" }, "done");
  const total = metrics && metrics.total_steps;
  if (!total) return h("span", { class: "muted" }, job.status === "queued" ? "waiting for a worker" : "—");
  const step = Math.min(metrics.step, total);
  return h(
    "span",
    { class: "progress" },
    h("progress", { max: total, value: step, "aria-label": `step ${step} of ${total}` }),
    h("span", {}, `${step}/${total} · ${percent(step / total)}`),
  );
}

/** The expected finish of an active job, relative with the local time on hover. */
export function etaCell(job) {
  if (!job.estimated_finish || ["succeeded", "failed", "cancelled", "paused"].includes(job.status)) {
    return h("span", { class: "muted" }, "—");
  }
  return h("time", { datetime: new Date(job.estimated_finish * 1000).toISOString(), title: when(job.estimated_finish) }, fromNow(job.estimated_finish));
}
