"""DPO step time and peak memory of our recipe against TRL's ``DPOTrainer`` on the same pairs,
model, LoRA (r16, all linear layers) and batch size of pairs, each run its own process.

Two TRL runs: its default, which gets the reference's log-probabilities by a second forward
pass with the adapter disabled at every step, and ``precompute_ref_log_probs=True``, which
computes them once before training as our recipe does (the like-for-like comparison).

    python -m bench.dpo_throughput            # prints its own table
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.common import BENCH_DIR, MB, Row, fmt_ms, jsonl, preference_rows, table
from bench.train_throughput import (
    REAL_MODEL,
    SEED,
    Result,
    StepClock,
    Workload,
    _child,
    _mean_context,
    _Peak,
    _window,
    train_timed,
    trl_arguments,
    trl_lora,
)

BETA = 0.1
IMPLEMENTATIONS = {
    "ours": "ours",
    "trl": "TRL DPOTrainer (reference pass every step)",
    "trl-precomputed": "TRL DPOTrainer, precompute_ref_log_probs",
}


# -- in the child process --------------------------------------------------------------------
def _pairs(work: Workload) -> list[Any]:
    from ftaas_core.datasets import iter_examples
    from ftaas_core.storage import iter_stream

    return list(iter_examples(iter_stream(Path(work.data).open("rb"))))


def _encoded(work: Workload, pairs: list[Any]) -> list[Any]:
    from transformers import AutoTokenizer

    from ftaas_core.encoding import encode_examples

    tokenizer = AutoTokenizer.from_pretrained(work.model_dir)
    return encode_examples(tokenizer, pairs, work.max_seq_length)[0]


def _rows_of(encoded: list[Any]) -> list[Any]:
    return [row for pair in encoded for row in (pair.chosen, pair.rejected)]


def run_ours(work: Workload) -> Result:
    from ftaas_core.hyperparams import DpoHyperparameters, resolve
    from ftaas_worker.batches import make_batches
    from ftaas_worker.recipe import train

    pairs = _pairs(work)
    requested = DpoHyperparameters.model_validate(work.hyperparameters() | {"beta": BETA})
    hp = resolve(requested, len(pairs))
    hooks = StepClock()
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as tmp, _Peak(work.cuda) as peak:
        train(work.model_dir, pairs, None, hp, SEED, Path(tmp), hooks)
    encoded = _encoded(work, pairs)
    step_tokens = [
        sum(encoded[i].chosen.n_tokens + encoded[i].rejected.n_tokens for i in batch)
        for epoch in range(hp.n_epochs)
        for batch in make_batches(encoded, hp.batch_size, SEED, epoch)
    ]
    steps, seconds, tokens = _window(hooks.ends, step_tokens)
    return Result(steps, seconds, tokens, peak.bytes, _mean_context(_rows_of(encoded)))


def run_trl(work: Workload, precompute: bool) -> Result:
    """TRL's own tokenisation of the same conversations (its chat template is ours)."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    rows = [json.loads(line) for line in Path(work.data).read_text().splitlines()]
    dataset = Dataset.from_list(
        [
            {
                "prompt": row["input"]["messages"],
                "chosen": row["preferred_output"],
                "rejected": row["non_preferred_output"],
            }
            for row in rows
        ]
    )
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as tmp, _Peak(work.cuda) as peak:
        config = DPOConfig(
            **trl_arguments(work, tmp),
            beta=BETA,
            precompute_ref_log_probs=precompute,
            activation_checkpointing=False,
        )
        trainer = DPOTrainer(
            model=work.model_dir,
            args=config,
            train_dataset=dataset,
            processing_class=AutoTokenizer.from_pretrained(work.model_dir),
            peft_config=trl_lora(work),
        )
        steps, seconds, tokens = train_timed(trainer)
    return Result(steps, seconds, tokens, peak.bytes, 0.0)


def _child_main(mode: str, payload: str) -> None:
    work = Workload(**json.loads(payload))
    result = run_ours(work) if mode == "ours" else run_trl(work, mode == "trl-precomputed")
    print("RESULT " + json.dumps(asdict(result)))


# -- in the parent ---------------------------------------------------------------------------
def workloads() -> list[Workload]:
    """The tiny model, and SmolLM2-135M-Instruct when its wheel is installed (CPU, fp32)."""
    from ftaas_core.builtin_models import gguf_file
    from ftaas_worker.gguf import model_folder_from_gguf
    from ftaas_worker.tiny_model import build_tiny_model

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    tiny_data = BENCH_DIR / "dpo-tiny.jsonl"
    tiny_data.write_bytes(jsonl(preference_rows(64, SEED, 10, 60)))
    tiny = build_tiny_model(BENCH_DIR / "tiny-model")
    result = [Workload("tiny (CPU, fp32)", str(tiny), str(tiny_data), 64, 4, 1, 256)]
    if (source := gguf_file(REAL_MODEL)) is not None:
        model_dir = model_folder_from_gguf(source, BENCH_DIR.parent / "models" / REAL_MODEL)
        data = BENCH_DIR / "dpo-smollm2.jsonl"
        data.write_bytes(jsonl(preference_rows(24, SEED, 8, 40)))
        result.append(
            Workload(f"{REAL_MODEL} (CPU, fp32)", str(model_dir), str(data), 24, 4, 1, 256)
        )
    return result


def run(repeats: int = 2) -> list[Row]:
    """Alternate the implementations ``repeats`` times per workload; each one's best run counts."""
    rows: list[Row] = []
    for work in workloads():
        best: dict[str, Result] = {}
        for _ in range(repeats):
            for impl in IMPLEMENTATIONS:
                found = _child(impl, asdict(work), module="bench.dpo_throughput")
                result = Result(**found) if found else None
                if result and (impl not in best or result.seconds < best[impl].seconds):
                    best[impl] = result
        rows += _rows(work, best)
    return rows


def _rows(work: Workload, best: dict[str, Result]) -> list[Row]:
    name = f"DPO {work.name}, {work.batch_size} pairs a step"
    ours = best.get("ours")
    if ours is None:
        return [Row(name, "our recipe failed", "—")]
    rows = []
    for impl in ("trl", "trl-precomputed"):
        trl = best.get(impl)
        missing = "TRL failed or not installed"
        rows += [
            Row(
                name,
                f"step time, {ours.steps} timed steps (baseline {IMPLEMENTATIONS[impl]})",
                fmt_ms(ours.step_seconds),
                fmt_ms(trl.step_seconds) if trl else missing,
                ours.step_seconds / trl.step_seconds if trl else None,
            ),
            Row(
                name,
                f"peak RSS growth while training (baseline {IMPLEMENTATIONS[impl]})",
                f"{ours.peak_bytes / MB:,.0f} MB",
                f"{trl.peak_bytes / MB:,.0f} MB" if trl else missing,
                ours.peak_bytes / trl.peak_bytes if trl and trl.peak_bytes > 0 else None,
            ),
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=2, metavar=("MODE", "JSON"), help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=2, help="runs per trainer; the best counts")
    args = parser.parse_args()
    if args.child:
        _child_main(*args.child)
        return
    print(table(run(args.repeats)))


if __name__ == "__main__":
    sys.exit(main())
