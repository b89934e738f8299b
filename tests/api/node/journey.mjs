// The official openai Node SDK, unchanged, through ftaas: upload → job → events → checkpoints →
// errors. Run by tests/api/test_node_sdk.py, which starts the server and a worker and reads the
// one JSON object this prints. The SDK reads OPENAI_BASE_URL and OPENAI_API_KEY itself;
// FTAAS_TRAINING_FILE is the dataset to upload, FTAAS_HYPERPARAMETERS the job's (JSON).
import { readFile } from "node:fs/promises";

import OpenAI, { toFile } from "openai";
import { VERSION } from "openai/version";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const client = new OpenAI({ maxRetries: 0 });

/** The error an SDK call raises, as the SDK classified it (or null when it succeeds). */
async function failure(call) {
  try {
    await call();
    return null;
  } catch (error) {
    if (!(error instanceof OpenAI.APIError)) throw error;
    return { name: error.constructor.name, status: error.status, type: error.type, code: error.code, param: error.param };
  }
}

async function waitForTerminal(jobId, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const job = await client.fineTuning.jobs.retrieve(jobId);
    if (TERMINAL.has(job.status)) return job;
    if (Date.now() > deadline) throw new Error(`job ${jobId} still ${job.status}`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

const data = await readFile(process.env.FTAAS_TRAINING_FILE);
const uploaded = await client.files.create({ file: await toFile(data, "train.jsonl"), purpose: "fine-tune" });
const retrieved = await client.files.retrieve(uploaded.id);
const content = Buffer.from(await (await client.files.content(uploaded.id)).arrayBuffer());
const files = [];
for await (const file of client.files.list()) files.push(file.id);

const created = await client.fineTuning.jobs.create({
  model: "tiny",
  training_file: uploaded.id,
  suffix: "node",
  method: { type: "supervised", supervised: { hyperparameters: JSON.parse(process.env.FTAAS_HYPERPARAMETERS) } },
});
const listedJobs = (await client.fineTuning.jobs.list({ limit: 5 })).data.map((job) => job.id);
const done = await waitForTerminal(created.id, 240_000);

const events = [];
for await (const event of client.fineTuning.jobs.listEvents(created.id, { limit: 100 })) events.push(event);
const checkpoints = [];
for await (const checkpoint of client.fineTuning.jobs.checkpoints.list(created.id)) checkpoints.push(checkpoint);
const models = [];
for await (const model of client.models.list()) models.push(model.id);

const stranger = new OpenAI({ apiKey: "ftk_wrong", maxRetries: 0 });
const errors = {
  cancel_finished: await failure(() => client.fineTuning.jobs.cancel(created.id)),
  retrieve_missing: await failure(() => client.fineTuning.jobs.retrieve("ftjob-missing")),
  unknown_model: await failure(() => client.fineTuning.jobs.create({ model: "nope", training_file: uploaded.id })),
  missing_file: await failure(() => client.files.retrieve("file-missing")),
  bad_key: await failure(() => stranger.files.list()),
};
const deleted = await client.files.delete(uploaded.id);

console.log(
  JSON.stringify({
    sdk_version: VERSION,
    file: { id: uploaded.id, status: uploaded.status, bytes: retrieved.bytes, filename: retrieved.filename },
    content_matches: content.equals(data),
    files,
    job: { id: created.id, status: created.status, n_epochs: created.hyperparameters.n_epochs },
    listed_jobs: listedJobs,
    done: {
      status: done.status,
      fine_tuned_model: done.fine_tuned_model,
      trained_tokens: done.trained_tokens,
      result_files: done.result_files,
      error: done.error,
    },
    events: events.map((event) => ({ type: event.type, level: event.level, message: event.message, data: event.data })),
    checkpoints: checkpoints.map((c) => ({ step_number: c.step_number, model: c.fine_tuned_model_checkpoint, metrics: c.metrics })),
    models,
    errors,
    deleted: deleted.deleted,
  }),
);
