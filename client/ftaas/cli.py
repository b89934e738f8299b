"""The ``ftaas`` command: ``ftaas files ...`` and ``ftaas jobs ...``, the SDK from the shell.

Tables by default, ``--json`` for scripts. Server errors print the server's message to stderr
and exit 1. Imports nothing of the server, so it works from a laptop with only the SDK. The
server distributions add their commands (``serve``, ``worker``, ``keys`` ...) through the
``ftaas.commands`` entry point group: each names a ``register(groups)`` function.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel

from ftaas._client import Client
from ftaas.errors import APIStatusError, FtaasError
from ftaas.types import FileFindings, FileObject, FileReport, FineTuningJob, JobEvent, Sample

Handler = Callable[[Client, argparse.Namespace], None]
CommandGroup = argparse._SubParsersAction  # the subcommands of ``ftaas`` or of one of its groups
COMMANDS_ENTRY_POINTS = "ftaas.commands"

FILE_COLUMNS = ("id", "filename", "bytes", "status", "created_at")
JOB_COLUMNS = ("id", "model", "status", "fine_tuned_model", "created_at")
JOB_FIELDS = (
    "id", "model", "status", "training_file", "validation_file", "fine_tuned_model",
    "trained_tokens", "seed", "hyperparameters", "created_at", "finished_at", "error",
)  # fmt: skip
EVENT_COLUMNS = ("created_at", "level", "type", "message")
REPORT_SHOWN = 20  # entries per list in a report's text form; --json has them all


def _cell(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if name.endswith("_at") and isinstance(value, int):
        return datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, BaseModel):
        value = value.model_dump(exclude_none=True)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _table(rows: Sequence[BaseModel], columns: Sequence[str]) -> str:
    """Columns aligned with spaces, a header first: readable and still easy to ``awk``."""
    cells = [list(columns)] + [[_cell(c, getattr(row, c, None)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in cells
    )


def _record(obj: BaseModel, fields: Sequence[str]) -> str:
    """One object as ``field  value`` lines."""
    width = max(len(f) for f in fields)
    return "\n".join(f"{f.ljust(width)}  {_cell(f, getattr(obj, f, None))}" for f in fields)


def _emit(args: argparse.Namespace, value: BaseModel | Sequence[BaseModel], text: str) -> None:
    if args.json:
        data = (
            value.model_dump(mode="json")
            if isinstance(value, BaseModel)
            else [v.model_dump(mode="json") for v in value]
        )
        print(json.dumps(data, indent=2))
    else:
        print(text)


def _listing(title: str, count: int, entries: Sequence[str]) -> list[str]:
    """A count and its first entries; nothing at all when the count is zero."""
    lines = [f"{title}: {count}"] if count else []
    lines += [f"  {entry}" for entry in entries[:REPORT_SHOWN]]
    if count > REPORT_SHOWN:
        lines.append(f"  ... and {count - REPORT_SHOWN} more (see --json)")
    return lines


def _findings(title: str, f: FileFindings) -> list[str]:
    lines = [f"{title}: {f.n_examples} examples in {f.n_lines} lines ({f.n_bytes} bytes)"]
    if (t := f.tokens) is not None:
        lines.append(
            f"tokens per example: min {t.min}, mean {t.mean:g}, p95 {t.p95}, max {t.max}; "
            f"{t.total} in all, {t.trained} trained per epoch"
        )
    errors = [
        f"line {e.line}: " + (f"{e.field}: " if e.field else "") + e.message for e in f.errors
    ]
    lines += _listing("errors", f.n_errors, errors)
    truncated = [
        f"line {t.line}: {t.n_tokens} tokens"
        + (" (dropped: nothing left to train)" if t.dropped else "")
        for t in f.truncated
    ]
    lines += _listing("truncated", f.n_truncated, truncated)
    duplicates = [f"line {d.line} repeats line {d.first_line}" for d in f.duplicates]
    lines += _listing("duplicates", f.n_duplicates, duplicates)
    if (pairs := f.preference) is not None:
        lines.append(
            f"mean tokens of a pair's prompt {pairs.prompt_tokens.mean:g}, preferred answer "
            f"{pairs.preferred_tokens.mean:g}, non-preferred answer "
            f"{pairs.non_preferred_tokens.mean:g}"
        )
        identical = [f"line {line}" for line in pairs.identical]
        lines += _listing("pairs with identical answers", pairs.n_identical, identical)
    return lines


def format_report(report: FileReport) -> str:
    """A dataset report for a terminal: counts, the first entries of each list, the preview."""
    lines = [f"model {report.model}, max_seq_length {report.max_seq_length}"]
    lines += _findings("training file", report)
    if report.validation is not None:
        lines += _findings("validation file", report.validation)
        overlap = [
            f"validation line {o.line} = training line {o.first_line}" for o in report.overlapping
        ]
        lines += _listing("in both files", report.n_overlapping, overlap)
    if (p := report.preview) is not None:
        truncated = ", truncated" if p.truncated else ""
        lines.append(
            f"preview of line {p.line} ({p.n_tokens} tokens, "
            f"{p.n_trained_tokens} trained ⟦marked⟧{truncated}):"
        )
        lines.append(p.text)
    return "\n".join(lines)


def show_report(report: FileReport, as_json: bool) -> None:
    """Print a report; exit 1 when a file has errors, so scripts and CI can gate on it."""
    print(report.model_dump_json(indent=2) if as_json else format_report(report))
    if report.n_errors or (report.validation is not None and report.validation.n_errors):
        sys.exit(1)


def _hyperparameter(text: str) -> tuple[str, Any]:
    """``key=value``, the value parsed as JSON when it is JSON (``3``, ``1e-4``, ``"auto"``,
    ``["q_proj"]``) and kept as a string otherwise (``auto``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


# -- handlers --------------------------------------------------------------------------------


def _files_upload(client: Client, args: argparse.Namespace) -> None:
    uploaded = client.files.upload(args.path, purpose=args.purpose, progress=not args.no_progress)
    _emit(args, uploaded, _table([uploaded], FILE_COLUMNS))


def _files_list(client: Client, args: argparse.Namespace) -> None:
    files: list[FileObject] = list(client.files.list())
    _emit(args, files, _table(files, FILE_COLUMNS))


def _files_report(client: Client, args: argparse.Namespace) -> None:
    report = client.files.report(
        args.file_id,
        args.model,
        max_seq_length=args.max_seq_length,
        validation_file=args.validation_file,
    )
    show_report(report, args.json)


def _jobs_create(client: Client, args: argparse.Namespace) -> None:
    job = client.fine_tuning.jobs.create(
        args.model,
        args.training_file,
        validation_file=args.validation_file,
        hyperparameters=dict(args.hp) if args.hp else None,
        suffix=args.suffix,
        seed=args.seed,
        method=args.method,
    )
    _emit(args, job, _record(job, JOB_FIELDS))


def _jobs_list(client: Client, args: argparse.Namespace) -> None:
    jobs: list[FineTuningJob] = list(
        itertools.islice(client.fine_tuning.jobs.list(limit=min(args.limit, 100)), args.limit)
    )
    _emit(args, jobs, _table(jobs, JOB_COLUMNS))


def _jobs_get(client: Client, args: argparse.Namespace) -> None:
    job = client.fine_tuning.jobs.get(args.job_id)
    _emit(args, job, _record(job, JOB_FIELDS))


def _jobs_cancel(client: Client, args: argparse.Namespace) -> None:
    job = client.fine_tuning.jobs.cancel(args.job_id)
    _emit(args, job, _record(job, JOB_FIELDS))


def _jobs_events(client: Client, args: argparse.Namespace) -> None:
    events: list[JobEvent] = list(client.fine_tuning.jobs.events.list(args.job_id))
    _emit(args, events, _table(events, EVENT_COLUMNS))


def _jobs_samples(client: Client, args: argparse.Namespace) -> None:
    samples = client.fine_tuning.jobs.samples(args.job_id)
    _emit(args, samples, _samples_text(samples))


def _samples_text(samples: Sequence[Sample]) -> str:
    """Each prompt's last turn, then what the reference, the base and the fine-tuned model say."""
    if not samples:
        return "no samples yet: a job has them once it has succeeded"
    blocks = []
    for sample in samples:
        asked = sample.prompt if isinstance(sample.prompt, str) else sample.prompt[-1]["content"]
        blocks.append(
            f"prompt      {asked}\nreference   {sample.reference}\n"
            f"base        {sample.base}\nfine-tuned  {sample.fine_tuned}"
        )
    return "\n\n".join(blocks)


def _jobs_wait(client: Client, args: argparse.Namespace) -> None:
    job = client.fine_tuning.jobs.wait(
        args.job_id,
        timeout=args.timeout,
        poll_interval=args.poll_interval,
        progress=not args.no_progress,
    )
    _emit(args, job, _record(job, JOB_FIELDS))
    if job.status != "succeeded":
        reason = f": {job.error.message}" if job.error else ""
        sys.exit(f"job {job.id} {job.status}{reason}")


def _jobs_download(client: Client, args: argparse.Namespace) -> None:
    path = client.fine_tuning.jobs.download_adapter(
        args.job_id, args.dest, checkpoint=args.checkpoint
    )
    print(json.dumps({"path": str(path)}) if args.json else path)


def _run(handler: Handler) -> Callable[[argparse.Namespace], None]:
    def run(args: argparse.Namespace) -> None:
        try:
            with Client(args.base_url, args.api_key) as client:
                handler(client, args)
        except APIStatusError as exc:
            sys.exit(f"error ({exc.status_code}): {exc.message}")
        except (FtaasError, OSError) as exc:  # OSError: a local file to upload or unpack into
            sys.exit(f"error: {exc}")

    return run


# -- parser ----------------------------------------------------------------------------------


def add_client_commands(subparsers: CommandGroup) -> dict[str, CommandGroup]:
    """Add ``files`` and ``jobs`` to the ``ftaas`` command's subcommands; returns both groups'
    subcommands, so the server side can add to them (the offline ``files check``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--base-url", help="server root URL (default: $FTAAS_BASE_URL)")
    common.add_argument("--api-key", help="API key (default: $FTAAS_API_KEY)")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def command(group: Any, name: str, handler: Handler, text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = group.add_parser(name, parents=[common], help=text)
        parser.set_defaults(func=_run(handler))
        return parser

    files = subparsers.add_parser("files", help="upload and list datasets").add_subparsers(
        dest="files", required=True
    )
    upload = command(
        files,
        "upload",
        _files_upload,
        "upload a JSONL dataset (over 64 MiB: in parts, through /v1/uploads)",
    )
    upload.add_argument("path")
    upload.add_argument("--purpose", default="fine-tune")
    upload.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    command(files, "list", _files_list, "list uploaded files")
    report = command(
        files, "report", _files_report, "dry-run an uploaded file with a model's tokenizer"
    )
    report.add_argument("file_id")
    report.add_argument("--model", required=True, help="a base model of the deployment")
    report.add_argument("--max-seq-length", type=int, default=2048)
    report.add_argument("--validation-file", help="file id of a validation set to compare")

    jobs = subparsers.add_parser("jobs", help="create and follow fine-tuning jobs").add_subparsers(
        dest="jobs", required=True
    )
    create = command(jobs, "create", _jobs_create, "create a fine-tuning job")
    create.add_argument("--model", required=True, help="a model, or a fine-tuned one to continue")
    create.add_argument("--training-file", required=True, help="file id")
    create.add_argument(
        "--method",
        choices=("supervised", "dpo"),
        default="supervised",
        help="dpo trains on a preference file (default: supervised)",
    )
    create.add_argument("--validation-file", help="file id")
    create.add_argument("--suffix")
    create.add_argument("--seed", type=int)
    create.add_argument(
        "--hp",
        type=_hyperparameter,
        action="append",
        metavar="KEY=VALUE",
        help="a hyperparameter (repeatable), e.g. --hp n_epochs=3 --hp lora_r=16",
    )
    listing = command(jobs, "list", _jobs_list, "list jobs, newest first")
    listing.add_argument("--limit", type=int, default=20, help="how many to show (default 20)")
    for name, handler, text in (
        ("get", _jobs_get, "show a job"),
        ("cancel", _jobs_cancel, "cancel a job"),
        ("events", _jobs_events, "show a job's events, newest first"),
        ("samples", _jobs_samples, "show base vs fine-tuned answers to the job's prompts"),
    ):
        command(jobs, name, handler, text).add_argument("job_id")
    wait = command(
        jobs, "wait", _jobs_wait, "wait for a job to finish (exit 1 unless it succeeded)"
    )
    wait.add_argument("job_id")
    wait.add_argument("--timeout", type=float, help="seconds before giving up")
    wait.add_argument("--poll-interval", type=float, default=2.0)
    wait.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    download = command(jobs, "download", _jobs_download, "download and unpack a job's adapter")
    download.add_argument("job_id")
    download.add_argument("dest", help="directory to unpack the adapter into")
    download.add_argument("--checkpoint", help="a checkpoint id instead of the final adapter")
    return {"files": files, "jobs": jobs}


def build_parser() -> argparse.ArgumentParser:
    """The SDK's commands, then those of every installed server distribution."""
    parser = argparse.ArgumentParser(prog="ftaas", description="ftaas: fine-tuning on your GPUs.")
    commands = parser.add_subparsers(dest="command", required=True)
    groups = {"ftaas": commands, **add_client_commands(commands)}
    for entry in sorted(entry_points(group=COMMANDS_ENTRY_POINTS), key=lambda e: e.name):
        entry.load()(groups)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)
