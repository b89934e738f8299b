"""Training beyond one process, our recipe on both sides of each ratio: tokens/s of a job on
two processes (the model replicated, or sharded with FSDP2) against one, and the peak memory of QLoRA (the base in 4-bit NF4)
against full precision on SmolLM2-135M-Instruct. Each run is a process of its own.

On a CPU every process runs torch on one thread (see bench.run), so the second process brings
a second core: the ratio says how much of it the exchanges between the processes leave over.

    python -m bench.scale_out            # prints its own table
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, replace

from bench.common import MB, Row, table
from bench.train_throughput import REAL_MODEL, Result, Workload, _child, workloads


def _run(work: Workload) -> Result | None:
    found = _child("ours", asdict(work))
    return Result(**found) if found else None


def run() -> list[Row]:
    import torch

    cuda = torch.cuda.is_available()
    rows: list[Row] = []
    for work in workloads(cuda):
        name = f"scale {work.name}"
        one = _run(work)
        if one is None:
            rows.append(Row(name, "our recipe failed", "—"))
            continue
        if cuda and torch.cuda.device_count() < 2:
            rows.append(Row(name, "tokens/s on 2 processes", "n/a (one GPU)"))
        for sharding in ("replicate", "fsdp2") if not cuda or torch.cuda.device_count() > 1 else ():
            if two := _run(replace(work, nproc=2, sharding=sharding)):
                rows.append(
                    Row(
                        name,
                        f"tokens/s on 2 processes, {sharding} (baseline: 1 process)",
                        f"{two.tokens_per_second:,.0f}",
                        f"{one.tokens_per_second:,.0f}",
                        two.tokens_per_second / one.tokens_per_second,
                    )
                )
        if REAL_MODEL in work.name and (qlora := _run(replace(work, load_in_4bit=True))):
            what = "peak CUDA memory" if cuda else "peak RSS growth"
            weights = {
                quantized: _child("footprint", {"model": work.model_dir, "4bit": quantized}, MODULE)
                for quantized in (True, False)
            }
            if weights[True] and weights[False]:
                rows.append(
                    Row(
                        name,
                        "QLoRA (NF4 base): the base model's weights in memory "
                        "(baseline: full precision)",
                        f"{weights[True]['bytes'] / MB:,.0f} MB",
                        f"{weights[False]['bytes'] / MB:,.0f} MB",
                        weights[True]["bytes"] / weights[False]["bytes"],
                    )
                )
            rows += [
                Row(
                    name,
                    f"QLoRA (NF4 base): {what} (baseline: full precision)",
                    f"{qlora.peak_bytes / MB:,.0f} MB",
                    f"{one.peak_bytes / MB:,.0f} MB",
                    qlora.peak_bytes / one.peak_bytes,
                ),
                Row(
                    name,
                    "QLoRA (NF4 base): step time (baseline: full precision)",
                    f"{qlora.step_seconds:.2f} s",
                    f"{one.step_seconds:.2f} s",
                    qlora.step_seconds / one.step_seconds,
                ),
            ]
    return rows


MODULE = "bench.scale_out"


def _footprint(model_dir: str, load_in_4bit: bool) -> int:
    """Bytes of the base model's parameters and buffers as the recipe loads it."""
    import torch

    from ftaas_core.hyperparams import Hyperparameters, resolve
    from ftaas_worker.recipe import _load_base_model

    hp = resolve(Hyperparameters(load_in_4bit=load_in_4bit), 100)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return _load_base_model(model_dir, device, hp).get_memory_footprint()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:  # python -m bench.scale_out --child footprint JSON
        payload = json.loads(sys.argv[3])
        print("RESULT " + json.dumps({"bytes": _footprint(payload["model"], payload["4bit"])}))
    else:
        print(table(run()))
