"""What the service adds to a training run: the same tiny-model LoRA training as a plain
transformers + peft loop written here, as our recipe in-process, and as a job through the API and
a warm worker; plus the latency from submitting a job to its first training step.

The plain loop is deliberately the textbook one (``model(**batch).loss``, AdamW, the transformers
cosine schedule); it shares only data preparation (tokenising and length-grouped batches) with the
recipe, so any difference in per-step time or loss comes from the loop or from the service.
"""

from __future__ import annotations

import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import psutil

from bench.common import (
    BENCH_DIR,
    TERMINAL,
    Row,
    chat_rows,
    fmt_ms,
    fmt_s,
    jsonl,
    parse_rows,
    service,
    upload_bytes,
)

SEED = 1234
N_EXAMPLES = 64
HYPERPARAMETERS: dict[str, Any] = {
    "n_epochs": 6,
    "batch_size": 4,
    "learning_rate": 3e-3,
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "warmup_ratio": 0.0,  # so the transformers cosine schedule is the recipe's schedule exactly
    "weight_decay": 0.0,
    "max_seq_length": 256,
}
"""96 optimizer steps: under the recipe's 100, so it reports metrics after every step."""
LOSS_TOLERANCE = 1e-4
PER_STEP_TARGET = 1.05
LATENCY_TARGET_S = 1.0
POLL_S = 0.1
REPEATS = 3


@dataclass
class Run:
    """Per-step losses, step durations and step end times of one training run."""

    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    step_ends: list[float] = field(default_factory=list)
    step_tokens: list[int] = field(default_factory=list)
    wall: float = 0.0

    def mean_step(self) -> float:
        """Mean step time without the first step (one-off allocations and lazy initialisation)."""
        return statistics.fmean(self.step_seconds[1:])


def resolved_hyperparameters() -> Any:
    from ftaas_core.hyperparams import Hyperparameters, resolve

    return resolve(Hyperparameters.model_validate(HYPERPARAMETERS), N_EXAMPLES)


def plain_loop(model_dir: Path, examples: list[Any], out_dir: Path) -> Run:
    """The baseline: a minimal transformers + peft loop over the same batches, timed per step."""
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

    from ftaas_core.encoding import encode_examples
    from ftaas_worker.batches import collate, make_batches

    hp = resolved_hyperparameters()
    run = Run()
    start = time.perf_counter()
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train_set, _ = encode_examples(tokenizer, examples, hp.max_seq_length)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lora = LoraConfig(
        r=hp.lora_r,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=hp.target_modules,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=hp.weight_decay)
    total = hp.n_epochs * math.ceil(len(train_set) / hp.batch_size)
    scheduler = get_cosine_schedule_with_warmup(optimizer, 0, total)
    for epoch in range(hp.n_epochs):
        for batch in make_batches(train_set, hp.batch_size, SEED, epoch):
            step_start = time.perf_counter()
            inputs = collate([train_set[i] for i in batch], tokenizer.pad_token_id)
            loss = model(**inputs).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, hp.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            run.losses.append(loss.item())
            run.step_ends.append(time.perf_counter())
            run.step_seconds.append(run.step_ends[-1] - step_start)
            run.step_tokens.append(int(inputs["attention_mask"].sum()))
    model.save_pretrained(out_dir)
    run.wall = time.perf_counter() - start
    return run


class _Hooks:
    """Recipe hooks that only record: the in-process run has no service around it."""

    def __init__(self) -> None:
        self.metrics: list[dict[str, float | int]] = []

    def on_phase(self, message: str) -> None:
        pass

    def on_metrics(self, data: dict[str, float | int]) -> None:
        self.metrics.append(data)

    def on_checkpoint(self, step: int, directory: Path, metrics: dict[str, float | int]) -> None:
        pass

    def stop_requested(self) -> None:
        return None


def recipe_in_process(model_dir: Path, examples: list[Any], step_tokens: list[int]) -> Run:
    from ftaas_worker.recipe import train

    hooks = _Hooks()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as work_dir:
        result = train(
            str(model_dir), examples, None, resolved_hyperparameters(), SEED, Path(work_dir), hooks
        )
    run = _from_metrics(hooks.metrics, step_tokens)
    run.losses = result.per_step_losses
    run.wall = time.perf_counter() - start
    return run


def _from_metrics(metrics: list[dict[str, Any]], step_tokens: list[int]) -> Run:
    """Per-step times from the recipe's metrics: it reports after every step here, and its
    tokens/s covers just that step's (non-padding) tokens, which the plain loop counted."""
    steps = [int(m["step"]) for m in metrics]
    if steps != list(range(1, len(step_tokens) + 1)):
        raise RuntimeError(f"expected metrics after every one of {len(step_tokens)} steps")
    return Run(
        losses=[float(m["train_loss"]) for m in metrics],
        step_seconds=[
            n / m["tokens_per_second"] for n, m in zip(step_tokens, metrics, strict=True)
        ],
        step_tokens=step_tokens,
    )


@dataclass
class Observed:
    """A job as a client sees it: when each event first appeared (perf_counter), its events."""

    submitted: float
    finished: float
    job: dict[str, Any]
    seen: dict[str, float]  # event id -> first seen
    events: list[dict[str, Any]]  # oldest first

    def first_seen(self, predicate: Any) -> float:
        return min(self.seen[e["id"]] for e in self.events if predicate(e))


def follow_job(http: httpx2.Client, body: dict[str, Any], poll: float) -> Observed:
    """Submit a job and poll its newest events every ``poll`` seconds until it ends."""
    submitted = time.perf_counter()
    response = http.post("/v1/fine_tuning/jobs", json=body)
    response.raise_for_status()
    job_id = response.json()["id"]
    seen: dict[str, float] = {}
    status, last_status_check = "queued", 0.0
    while status not in TERMINAL:
        page = http.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100}).json()
        now = time.perf_counter()
        for event in page["data"]:
            seen.setdefault(event["id"], now)
        if now - last_status_check > 1 or any(
            e["message"] == "The job has successfully completed" for e in page["data"][:3]
        ):
            status, last_status_check = (
                http.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"],
                now,
            )
        time.sleep(poll)
    finished = time.perf_counter()
    job = http.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    events = http.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1000}).json()
    return Observed(submitted, finished, job, seen, events["data"][::-1])


def _is_metrics(event: dict[str, Any]) -> bool:
    return event["type"] == "metrics"


def _message(prefix: str) -> Any:
    return lambda event: event["message"].startswith(prefix)


def latency_breakdown(observed: Observed) -> dict[str, float]:
    """Submit → first metrics event, and the model load ("Loading base model" → "Training
    started") that the target excludes; each time is when the client first saw the event."""
    first_step = observed.first_seen(_is_metrics) - observed.submitted
    started = observed.first_seen(_message("Fine-tuning job started")) - observed.submitted
    loading = observed.first_seen(_message("Loading base model"))
    model_load = observed.first_seen(_message("Training started")) - loading
    return {
        "first_step": first_step,
        "job_started": started,
        "model_load": model_load,
        "without_load": first_step - model_load,
    }


def import_seconds() -> float:
    """How long a fresh process takes to import what the job's work horse imports."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import ftaas_worker.recipe"], check=True)
    return time.perf_counter() - start


def _served(observed: Observed, step_tokens: list[int]) -> Run:
    """A service job as a Run: step times from its metrics' tokens/s, step ends from when the
    client saw each metrics event, wall from submit to seeing it succeed."""
    metrics = [e for e in observed.events if _is_metrics(e)]
    run = _from_metrics([e["data"] for e in metrics], step_tokens)
    run.step_ends = [observed.seen[e["id"]] for e in metrics]
    run.wall = observed.finished - observed.submitted
    return run


def _step_wall(run: Run) -> float:
    """Wall time per step between the first and the last step's end: everything the loop does."""
    return (run.step_ends[-1] - run.step_ends[0]) / (len(run.step_ends) - 1)


def _best(runs: list[Run], measure: Any) -> float:
    """The best of repeated runs: other processes on the machine only ever slow a run down."""
    return min(measure(r) for r in runs)


def _best_steps(runs: list[Run]) -> float:
    """Mean over steps (the first left out) of each step's fastest time across the runs: step i
    trains the same batch in every run, and load from other processes comes in short bursts."""
    per_step = zip(*(r.step_seconds for r in runs), strict=True)
    return statistics.fmean(min(times) for times in list(per_step)[1:])


def wait_until_settled(pid: int, quiet_s: float = 1.0, timeout: float = 120) -> None:
    """Until the worker and its children (the standby horse doing its imports) use no CPU for
    ``quiet_s``: what a worker that has been idle a while looks like."""
    worker = psutil.Process(pid)

    def cpu() -> float:
        return sum(sum(p.cpu_times()[:2]) for p in (worker, *worker.children(recursive=True)))

    deadline = time.monotonic() + timeout
    before = cpu()
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = cpu()
        if now - before < 0.05 * quiet_s:
            return
        before = now
    raise TimeoutError("the worker did not settle")


def run(model_dir: Path) -> list[Row]:
    """Plain and service runs alternate (REPEATS each) so both see the machine's changing load."""
    rows_data = chat_rows(N_EXAMPLES, SEED, 5, 40)
    examples = parse_rows(rows_data)
    plain: list[Run] = []
    recipe: list[Run] = []
    served: list[Run] = []
    with service("overhead", models={"tiny": str(model_dir)}, workers=1) as svc, svc.http() as http:
        file_id = upload_bytes(http, jsonl(rows_data))
        body = {
            "model": "tiny",
            "training_file": file_id,
            "seed": SEED,
            "hyperparameters": HYPERPARAMETERS,
        }
        for _ in range(REPEATS):
            plain.append(plain_loop(model_dir, examples, BENCH_DIR / "plain-adapter"))
            recipe.append(recipe_in_process(model_dir, examples, plain[0].step_tokens))
            job = follow_job(http, body, POLL_S)
            if job.job["status"] != "succeeded" or not job.job["fine_tuned_model"]:
                raise RuntimeError(f"the benchmark job did not succeed: {job.job}")
            served.append(_served(job, plain[0].step_tokens))
        # A short job on the warm, idle worker, polled closely, for the latency.
        wait_until_settled(svc.workers[0].pid)
        short = body | {"hyperparameters": HYPERPARAMETERS | {"n_epochs": 1}}
        latency = latency_breakdown(follow_job(http, short, 0.02))
    import_s = import_seconds()

    plain_step, served_step = _best_steps(plain), _best_steps(served)
    plain_wall_step, served_wall_step = _best(plain, _step_wall), _best(served, _step_wall)
    plain_wall, served_wall = _best(plain, lambda r: r.wall), _best(served, lambda r: r.wall)
    loss_diff, recipe_diff = (
        max(abs(a - b) for r in runs for a, b in zip(r.losses, plain[0].losses, strict=True))
        for runs in (served, recipe)
    )
    per_step = served_step / plain_step
    observed_ratio = served_wall_step / plain_wall_step
    name = "service overhead (CPU)"
    step_target = f"<= {PER_STEP_TARGET}x"
    return [
        Row(
            name,
            f"wall, {len(plain[0].losses)} steps (service: submit→succeeded; plain: load+train+save)",
            fmt_s(served_wall),
            fmt_s(plain_wall),
            served_wall / plain_wall,
        ),
        Row(
            name,
            f"per-step time (service: its metrics' tokens/s), best of {REPEATS} per step",
            fmt_ms(served_step),
            fmt_ms(plain_step),
            per_step,
            step_target,
            per_step <= PER_STEP_TARGET,
        ),
        Row(
            name,
            f"per-step wall incl. hooks (service: metrics events seen by a {POLL_S:g} s poll)",
            fmt_ms(served_wall_step),
            fmt_ms(plain_wall_step),
            observed_ratio,
            step_target,
            observed_ratio <= PER_STEP_TARGET,
        ),
        Row(
            name,
            f"per-step time, recipe in-process, no service, best of {REPEATS} per step",
            fmt_ms(_best_steps(recipe)),
            fmt_ms(plain_step),
            _best_steps(recipe) / plain_step,
        ),
        *(
            Row(
                name,
                f"noise: mean step time, slowest vs fastest of {REPEATS} {which} runs",
                fmt_ms(max(means)),
                fmt_ms(min(means)),
                max(means) / min(means),
            )
            for which, means in (
                ("plain", [r.mean_step() for r in plain]),
                ("service", [r.mean_step() for r in served]),
            )
        ),
        Row(
            name,
            "max |Δ loss| per step, service metrics events vs plain",
            f"{loss_diff:.1e}",
            "0",
            target=f"<= {LOSS_TOLERANCE:g}",
            met=loss_diff <= LOSS_TOLERANCE,
        ),
        Row(
            name,
            "max |Δ loss| per step, recipe in-process vs plain",
            f"{recipe_diff:.1e}",
            "0",
            target=f"<= {LOSS_TOLERANCE:g}",
            met=recipe_diff <= LOSS_TOLERANCE,
        ),
        Row(
            name,
            "submit→first step minus model load (warm worker)",
            fmt_s(latency["without_load"]),
            target=f"< {LATENCY_TARGET_S:g} s",
            met=latency["without_load"] < LATENCY_TARGET_S,
        ),
        Row(
            name,
            "  of which submit→'job started' (handoff to the standby horse)",
            fmt_s(latency["job_started"]),
            f"{fmt_s(import_s)} (fresh python: import ftaas_worker.recipe)",
            latency["job_started"] / import_s,
        ),
        Row(name, "  model load (excluded)", fmt_s(latency["model_load"])),
    ]
