"""The ``ftaas`` command: client commands (no server code imported) and server commands."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Iterator
from pathlib import Path

from client.cli import add_client_commands, show_report


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    # Idle keep-alive connections stay open longer than clients and load balancers keep them,
    # so the server never closes one just as a client reuses it (a reset request).
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        reload=args.reload,
        timeout_keep_alive=75,
    )


def _worker(args: argparse.Namespace) -> None:
    from trainer_worker.worker import run_worker

    run_worker(burst=args.burst)


def _migrate(_: argparse.Namespace) -> None:
    from ftaas.db import get_database

    get_database().migrate()


def _keys_create(args: argparse.Namespace) -> None:
    from ftaas.db import get_database
    from ftaas.keys import create_key

    db = get_database()
    db.migrate()
    with db.session() as session:
        key = create_key(session, args.tenant)
    print(f"API key for tenant {args.tenant!r} (shown once, store it now):", file=sys.stderr)
    print(key)


def _keys_revoke(args: argparse.Namespace) -> None:
    from redis.exceptions import RedisError

    from ftaas.db import get_database
    from ftaas.keys import KEY_CACHE_SECONDS, revoke_key

    try:
        if not revoke_key(get_database(), args.key):
            sys.exit("no such live key")
    except RedisError as exc:
        sys.exit(
            f"revoked, but Redis is unreachable ({exc}): API servers may accept the key "
            f"for up to {KEY_CACHE_SECONDS} s more"
        )
    print("revoked")


def _files_check(args: argparse.Namespace) -> None:
    """The dataset report on local files, with no server: the same code the API runs."""
    try:
        from ftaas.settings import get_settings
        from trainer_worker.report import build_report, load_tokenizer
    except ImportError as exc:
        sys.exit(
            f"ftaas files check needs transformers, tokenizers and jinja2 ({exc}); "
            "install them with: pip install 'ftaas[api]'"
        )
    model_path = get_settings().models.get(args.model, args.model)
    try:
        tokenizer = load_tokenizer(model_path)
    except Exception as exc:  # whatever the loader meets: missing files, bad config, no hub
        sys.exit(f"error: cannot load the tokenizer of {args.model!r}: {exc}")
    validation = _chunks(args.validation) if args.validation else None
    try:
        report = build_report(
            tokenizer, args.model, _chunks(args.path), args.max_seq_length, validation
        )
    except OSError as exc:
        sys.exit(f"error: {exc}")
    show_report(report, args.json)


def _chunks(path: str) -> Iterator[bytes]:
    """A local file in 1 MiB chunks, opened when first read."""
    with Path(path).open("rb") as f:
        yield from iter(functools.partial(f.read, 1 << 20), b"")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def _tiny_model(args: argparse.Namespace) -> None:
    from trainer_worker.tiny_model import build_tiny_model

    print(build_tiny_model(Path(args.dir)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ftaas", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--reload", action="store_true", help="restart on code changes")
    serve.set_defaults(func=_serve)

    worker = sub.add_parser("worker", help="run a training worker (one GPU)")
    worker.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    worker.set_defaults(func=_worker)

    sub.add_parser("migrate", help="upgrade the database schema").set_defaults(func=_migrate)

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys", required=True)
    create = keys.add_parser("create", help="create a key (printed alone on the last line)")
    create.add_argument("--tenant", required=True)
    create.set_defaults(func=_keys_create)
    revoke = keys.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key")
    revoke.set_defaults(func=_keys_revoke)

    tiny = sub.add_parser("tiny-model", help="write a tiny random chat model for tests and demos")
    tiny.add_argument("dir")
    tiny.set_defaults(func=_tiny_model)

    files = add_client_commands(sub)
    check = files.add_parser(
        "check", help="dry-run a local JSONL file with a model's tokenizer (no server needed)"
    )
    check.add_argument("path")
    check.add_argument(
        "--model", required=True, help="a model directory, hub id or FTAAS_MODELS catalogue name"
    )
    check.add_argument("--max-seq-length", type=_positive_int, default=2048)
    check.add_argument("--validation", help="a local validation JSONL file to compare")
    check.add_argument("--json", action="store_true", help="print JSON instead of text")
    check.set_defaults(func=_files_check)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)
