"""``ftaas serve``, registered with the SDK's ``ftaas`` command through an entry point."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from ftaas.cli import CommandGroup


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

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
