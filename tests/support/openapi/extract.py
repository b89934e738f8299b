"""Rebuild ``openai-subset.json`` from OpenAI's full OpenAPI description.

CI runs in a fresh clone without the 3 MB description, so the tests keep only what they
check: the responses of the routes ftaas shares with OpenAI, the error body, and every schema
those reach through ``$ref``. Schemas are copied verbatim (quirks are the test's business).

    .venv/bin/python -m tests.support.openapi.extract [path/to/openai-openapi.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
DEFAULT_SOURCE = Path("/work/shared/reference/openai-openapi.json")
SUBSET = HERE / "openai-subset.json"
LICENSE = "openai-openapi.LICENSE"
SOURCE_NOTE = (
    "Subset of OpenAI's OpenAPI description (github.com/openai/openai-openapi, commit f85dbe2, "
    f"MIT licence: {LICENSE}), written by extract.py: the routes ftaas shares with OpenAI."
)

# The routes ftaas serves under OpenAI's paths, by OpenAI's path template.
SHARED: dict[str, tuple[str, ...]] = {
    "/files": ("get", "post"),
    "/files/{file_id}": ("get", "delete"),
    "/files/{file_id}/content": ("get",),
    "/fine_tuning/jobs": ("get", "post"),
    "/fine_tuning/jobs/{fine_tuning_job_id}": ("get",),
    "/fine_tuning/jobs/{fine_tuning_job_id}/cancel": ("post",),
    "/fine_tuning/jobs/{fine_tuning_job_id}/pause": ("post",),
    "/fine_tuning/jobs/{fine_tuning_job_id}/resume": ("post",),
    "/fine_tuning/jobs/{fine_tuning_job_id}/events": ("get",),
    "/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints": ("get",),
    "/models": ("get",),
    "/uploads": ("post",),
    "/uploads/{upload_id}/parts": ("post",),
    "/uploads/{upload_id}/complete": ("post",),
    "/uploads/{upload_id}/cancel": ("post",),
}
# Not reached from any route's documented responses, but every error body has this shape.
EXTRA_SCHEMAS = ("ErrorResponse",)
PREFIX = "#/components/schemas/"


def refs(node: Any) -> set[str]:
    """Names of the component schemas that ``node`` points at directly."""
    if isinstance(node, dict):
        found = set().union(*(refs(v) for v in node.values())) if node else set()
        ref = node.get("$ref")
        if isinstance(ref, str):
            if not ref.startswith(PREFIX):
                raise ValueError(f"unexpected $ref {ref!r}")
            found.add(ref.removeprefix(PREFIX))
        return found
    if isinstance(node, list):
        return set().union(*(refs(v) for v in node)) if node else set()
    return set()


def extract(spec: dict[str, Any]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for path, methods in SHARED.items():
        item = spec["paths"][path]
        paths[path] = {
            method: {
                "operationId": item[method]["operationId"],
                "responses": item[method]["responses"],
            }
            for method in methods
        }
    schemas = spec["components"]["schemas"]
    pending, kept = refs(paths) | set(EXTRA_SCHEMAS), set[str]()
    while pending:
        name = pending.pop()
        kept.add(name)
        pending |= refs(schemas[name]) - kept
    return {
        "openapi": spec["openapi"],
        "info": {
            "title": spec["info"]["title"],
            "version": spec["info"]["version"],
            "license": spec["info"]["license"],
            "description": SOURCE_NOTE,
        },
        "paths": paths,
        "components": {"schemas": {name: schemas[name] for name in sorted(kept)}},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE)
    source = parser.parse_args().source
    subset = extract(json.loads(source.read_text()))
    SUBSET.write_text(json.dumps(subset, indent=1, ensure_ascii=False) + "\n")
    shutil.copyfile(source.with_name(LICENSE), HERE / LICENSE)
    count = len(subset["components"]["schemas"])
    print(f"{SUBSET}: {len(subset['paths'])} paths, {count} schemas")


if __name__ == "__main__":
    main()
