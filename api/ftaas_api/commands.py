"""``ftaas serve``, registered with the SDK's ``ftaas`` command through an entry point."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from ftaas.cli import CommandGroup
from ftaas_core.shutdown import exit_on_sigterm


def _serve(args: argparse.Namespace) -> None:
    exit_on_sigterm()
    import uvicorn

    from ftaas_core.db import get_database

    # Before uvicorn takes over SIGTERM: its handler only asks a running server to stop, so a
    # migration waiting on an unreachable database would otherwise outlast the grace period.
    # Advisory-locked, so replicas starting together are safe.
    get_database().migrate()

    # Idle keep-alive connections stay open longer than clients and load balancers keep them,
    # so the server never closes one just as a client reuses it (a reset request).
    uvicorn.run(
        "ftaas_api.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        reload=args.reload,
        timeout_keep_alive=75,
    )


def register(groups: Mapping[str, CommandGroup]) -> None:
    serve = groups["ftaas"].add_parser("serve", help="run the API server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--reload", action="store_true", help="restart on code changes")
    serve.set_defaults(func=_serve)
