// What the job page draws from its metrics events: the loss curves, DPO's reward curves when a
// job reports them, and the retention figure when the run has measured one.

/** [step, value] points of ``key`` over metrics events (oldest first), one per step: a step
 *  repeated after a resume keeps its newest value. */
export function curve(events, key) {
  const byStep = new Map();
  for (const event of events) {
    const data = event.data || {};
    if (event.type === "metrics" && typeof data[key] === "number" && Number.isFinite(data[key])) {
      byStep.set(data.step, data[key]);
    }
  }
  return [...byStep].sort(([a], [b]) => a - b);
}

/** Every metric key among the events that ends with ``suffix`` (e.g. "rewards/margins"). */
export function keysEndingWith(events, suffix) {
  const keys = new Set();
  for (const event of events) {
    if (event.type !== "metrics" || !event.data) continue;
    for (const key of Object.keys(event.data)) if (key.endsWith(suffix)) keys.add(key);
  }
  return [...keys].sort();
}

/** The retention figure: how far the model moved from its base on general prompts. Read from
 *  the manifest's ``retention`` object, else from any key naming retention in the final metrics
 *  event or the manifest's metrics. {figures: [[name, value], ...], warning}, or null. */
export function retention(events, manifest) {
  const measured = manifest && manifest.retention;
  if (measured && typeof measured === "object") {
    const figures = Object.entries(measured);
    const warning = typeof measured.kl === "number" && typeof measured.warning_above === "number" && measured.kl > measured.warning_above;
    return { figures, warning };
  }
  const finalMetrics = [...events].reverse().find((event) => event.type === "metrics");
  const found = new Map();
  for (const source of [finalMetrics && finalMetrics.data, manifest, manifest && manifest.metrics]) {
    if (!source || typeof source !== "object") continue;
    for (const [key, value] of Object.entries(source)) if (/retention/i.test(key)) found.set(key, value);
  }
  return found.size ? { figures: [...found], warning: false } : null;
}

/** Text of a message list or a value: the last user turn of a conversation. */
function asText(value) {
  if (value === undefined || value === null) return undefined;
  const messages = Array.isArray(value) ? value : value.messages;
  if (Array.isArray(messages)) {
    const user = messages.filter((m) => m && m.role === "user").pop();
    return user ? String(user.content) : JSON.stringify(messages);
  }
  return typeof value === "string" ? value : JSON.stringify(value);
}

/** A sample row's prompt, base answer, fine-tuned answer and reference, as text, whatever its
 *  fields are called. */
export function sampleParts(row) {
  const pick = (...names) => asText(names.map((name) => row[name]).find((value) => value !== undefined && value !== null));
  return {
    prompt: pick("prompt", "messages", "question", "input"),
    base: pick("base", "base_answer", "base_completion", "base_output"),
    tuned: pick("fine_tuned", "fine_tuned_answer", "tuned", "adapter", "fine_tuned_completion", "fine_tuned_output"),
    reference: pick("reference", "expected", "target", "completion"),
  };
}
