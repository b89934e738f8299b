"""``ftaas worker`` and ``ftaas tiny-model``, registered with the SDK's ``ftaas`` command through
an entry point."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

from ftaas.cli import CommandGroup
from ftaas_core.shutdown import exit_on_sigterm


def _worker(args: argparse.Namespace) -> None:
    exit_on_sigterm()  # before the imports and the migration, which may wait on the database
    from ftaas_worker.worker import run_worker

    run_worker(burst=args.burst, one_job=args.one_job, ready_file=args.ready_file)


def _tiny_model(args: argparse.Namespace) -> None:
    from ftaas_worker.tiny_model import build_tiny_model

    print(build_tiny_model(Path(args.dir)))


def _model_from_gguf(args: argparse.Namespace) -> None:
    from ftaas_worker.gguf import model_folder_from_gguf

    print(model_folder_from_gguf(Path(args.gguf), Path(args.dir), args.dtype))


def register(groups: Mapping[str, CommandGroup]) -> None:
    commands = groups["ftaas"]
    worker = commands.add_parser("worker", help="run a training worker (one GPU)")
    worker.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    worker.add_argument(
        "--one-job",
        action="store_true",
        help="take at most one job, then exit (0, also when none is waiting): one per pod",
    )
    worker.add_argument(
        "--ready-file",
        type=Path,
        help="a file created once the worker is registered and takes jobs (for a probe)",
    )
    worker.set_defaults(func=_worker)

    tiny = commands.add_parser(
        "tiny-model", help="write a tiny random chat model for tests and demos"
    )
    tiny.add_argument("dir")
    tiny.set_defaults(func=_tiny_model)

    convert = commands.add_parser(
        "model-from-gguf",
        help="turn a GGUF file into a model folder for FTAAS_MODELS (weights, tokenizer, template)",
    )
    convert.add_argument("gguf", help="the .gguf file")
    convert.add_argument("dir", help="the model folder to write")
    convert.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    convert.set_defaults(func=_model_from_gguf)
