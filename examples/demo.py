"""`make demo`: the whole service on one machine, embedded, teaching a tiny model new facts.

Starts the API and one worker on the embedded defaults (SQLite, embedded Redis, local object
store), fine-tunes a tiny random chat model on examples/demo_train.jsonl through the SDK, then
prints its answers before and after, side by side. Everything it starts stops when it ends.
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
ROOT = Path(".ftaas/demo").resolve()
HYPERPARAMETERS = {
    "n_epochs": 12,
    "batch_size": 4,
    "learning_rate": 3e-3,
    "lora_r": 16,
    "lora_alpha": 32,
    "warmup_ratio": 0.1,
    "max_seq_length": 256,
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


def main() -> int:
    shutil.rmtree(ROOT, ignore_errors=True)
    ROOT.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTAAS_")}
    env |= {
        "FTAAS_DATA_DIR": str(ROOT / "data"),
        "FTAAS_MODELS": json.dumps({"tiny-chat": str(ROOT / "model")}),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
    }
    os.environ.clear()
    os.environ.update(env)

    from ftaas import Client
    from ftaas_core.db import get_database
    from ftaas_core.keys import create_key
    from ftaas_core.queue import get_redis
    from ftaas_worker.inference import chat_answers
    from ftaas_worker.tiny_model import build_tiny_model

    print("Building a tiny random chat model (nothing is downloaded)...")
    model_dir = build_tiny_model(ROOT / "model")
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
            job = ftaas.fine_tuning.jobs.create(
                "tiny-chat",
                train.id,
                validation_file=valid.id,
                hyperparameters=HYPERPARAMETERS,
                suffix="zubrovia",
                seed=42,
            )
            print(f"Created {job.id}; training on {train.filename}:")
            job = ftaas.fine_tuning.jobs.wait(job.id, timeout=600, progress=True)
            if job.status != "succeeded":
                print(f"The job {job.status}: {job.error}")
                return 1
            adapter = ftaas.fine_tuning.jobs.download_adapter(job.id, ROOT / "adapter")
        print(f"\n{job.fine_tuned_model}: adapter downloaded to {adapter}\n")
        return show_before_and_after(model_dir, adapter, chat_answers)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(30)


def show_before_and_after(model_dir: Path, adapter: Path, chat_answers) -> int:  # type: ignore[no-untyped-def]
    rows = [json.loads(line)["messages"] for line in (EXAMPLES / "demo_valid.jsonl").open()]
    questions = [messages[:-1] for messages in rows]
    expected = [messages[-1]["content"] for messages in rows]
    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers.utils.logging import disable_progress_bar

    disable_progress_bar()
    before = [a.replace("\ufffd", "?") for a in chat_answers(model_dir, questions)]
    after = chat_answers(model_dir, questions, adapter)
    width = max(len(m[-1]["content"]) for m in questions)
    print(f"{'question':<{width}} | {'before':<22} | after")
    print("-" * (width + 50))
    for messages, old, new, want in zip(questions, before, after, expected, strict=True):
        mark = "ok" if new == want else "--"
        print(f"{messages[-1]['content']:<{width}} | {old[:22]:<22} | {new}  [{mark}]")
    learned = sum(new == want for new, want in zip(after, expected, strict=True))
    print(
        f"\nThe fine-tuned model gives {learned}/{len(expected)} taught answers "
        f"(the base model: {sum(o == w for o, w in zip(before, expected, strict=True))})."
    )
    return 0 if learned >= len(expected) // 2 else 1


if __name__ == "__main__":
    sys.exit(main())
