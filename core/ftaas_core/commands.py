"""Server commands of the core: ``ftaas migrate``, ``ftaas keys create|revoke`` and the offline
``ftaas files check``. Registered with the SDK's ``ftaas`` command through an entry point, and
light to import: each command imports what it needs when it runs."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from ftaas.cli import CommandGroup, show_report


def _migrate(_: argparse.Namespace) -> None:
    from ftaas_core.db import get_database

    get_database().migrate()


def _keys_create(args: argparse.Namespace) -> None:
    from ftaas_core.db import get_database
    from ftaas_core.keys import create_key

    db = get_database()
    db.migrate()
    with db.session() as session:
        key = create_key(session, args.tenant)
    print(f"API key for tenant {args.tenant!r} (shown once, store it now):", file=sys.stderr)
    print(key)


def _keys_revoke(args: argparse.Namespace) -> None:
    from redis.exceptions import RedisError

    from ftaas_core.db import get_database
    from ftaas_core.keys import KEY_CACHE_SECONDS, revoke_key

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
        from ftaas_core.report import build_report, load_tokenizer
        from ftaas_core.settings import get_settings
    except ImportError as exc:
        sys.exit(
            f"ftaas files check needs transformers, tokenizers and jinja2 ({exc}); "
            "install them with: pip install 'ftaas-core[tokenizer]'"
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


def register(groups: Mapping[str, CommandGroup]) -> None:
    commands = groups["ftaas"]
    commands.add_parser("migrate", help="upgrade the database schema").set_defaults(func=_migrate)

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys", required=True
    )
    create = keys.add_parser("create", help="create a key (printed alone on the last line)")
    create.add_argument("--tenant", required=True)
    create.set_defaults(func=_keys_create)
    revoke = keys.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key")
    revoke.set_defaults(func=_keys_revoke)

    check = groups["files"].add_parser(
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
