"""The web console without a browser: served at ``/`` with no key and a strict CSP, every asset
from the package itself (nothing from another origin), small, and the API's routes unchanged."""

from __future__ import annotations

import gzip
import re
import tomllib
from pathlib import Path

import httpx2
import pytest

from ftaas_api.console.assets import STATIC, asset_paths
from tests.support.data import taught_dataset

ROOT = Path(__file__).resolve().parents[2]
BUDGET_BYTES = 300_000  # the whole console, gzipped
SVG_NAMESPACE = "http://www.w3.org/2000/svg"  # a name, never fetched
IMPORT = re.compile(r"""^\s*import\b[^'"]*['"]([^'"]+)['"]""", re.MULTILINE)
HTML_SINKS = re.compile(
    r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function"
)

# The console is the same on every backend: its server tests run on the embedded one only.
embedded = pytest.mark.parametrize("backend", ["embedded"], indirect=True)


def sources() -> dict[str, str]:
    return {name: path.read_text() for name, path in asset_paths().items()}


@embedded
def test_the_console_needs_no_key_and_carries_a_strict_csp(api_url: str) -> None:
    served = [""] + [f"console/{name}" for name in asset_paths() if name != "index.html"]
    for path in served:
        response = httpx2.get(f"{api_url}/{path}")
        assert response.status_code == 200, path
        policy = response.headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["default-src"] == "'self'"
        assert directives["script-src"] == "'self'"
        assert directives["frame-ancestors"] == "'none'"
        assert directives["object-src"] == "'none'"
        assert "unsafe" not in policy
        assert response.headers["x-content-type-options"] == "nosniff"
    index = httpx2.get(f"{api_url}/")
    assert index.headers["content-type"].startswith("text/html")
    script = httpx2.get(f"{api_url}/console/js/main.js", headers={"Accept-Encoding": "gzip"})
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.headers["content-encoding"] == "gzip"
    again = httpx2.get(f"{api_url}/", headers={"If-None-Match": index.headers["etag"]})
    assert again.status_code == 304


@embedded
def test_only_the_packaged_files_are_served(api_url: str) -> None:
    for path in ("/console/nope.js", "/console/../app.py", "/console/%2e%2e/app.py"):
        assert httpx2.get(f"{api_url}{path}").status_code == 404, path
    assert not [p for p in httpx2.get(f"{api_url}/openapi.json").json()["paths"] if "console" in p]
    assert httpx2.get(f"{api_url}/v1/files").status_code == 401  # the API still wants its key


@embedded
def test_file_examples_need_a_key_and_show_only_the_callers_files(
    http: httpx2.Client, other_http: httpx2.Client
) -> None:
    file_id = http.post(
        "/v1/files", data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", taught_dataset())}
    ).json()["id"]
    url = f"/console/api/file-examples?id={file_id}"
    assert http.get(url).json() == {"data": {file_id: 12}}
    assert other_http.get(url).json() == {"data": {}}
    assert httpx2.get(f"{http.base_url}{url}").status_code == 401


@embedded
def test_the_job_form_is_the_servers_request_schema(api_url: str) -> None:
    schema = httpx2.get(f"{api_url}/console/api/job-form").json()
    assert {"model", "training_file", "method", "suffix", "metadata"} <= set(schema["properties"])
    assert schema["$defs"]["Hyperparameters"]["properties"]["lora_r"]["default"] == 16


def test_no_asset_reaches_another_origin_or_runs_inline_script() -> None:
    for name, text in sources().items():
        origins = set(re.findall(r"[a-z][a-z0-9+.-]*://[^\s'\"`)]*", text, re.IGNORECASE))
        assert origins <= {SVG_NAMESPACE}, (name, origins)
        assert not re.search(r"(?:src|href)=\"//", text), name
        if name.endswith(".js"):
            assert not HTML_SINKS.search(text), name
            for target in IMPORT.findall(text):
                assert target.startswith(("./", "../")), (name, target)
        if name.endswith(".css"):
            assert "@import" not in text and "url(" not in text, name
    index = sources()["index.html"]
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", index, re.DOTALL)
    assert scripts and all(
        'src="/console/' in attrs and not body.strip() for attrs, body in scripts
    )
    assert not re.search(r"\s(on[a-z]+|style)=", index)


def test_the_console_fits_its_budget_and_ships_with_the_package() -> None:
    total = sum(len(gzip.compress(p.read_bytes(), 9)) for p in asset_paths().values())
    assert total < BUDGET_BYTES, total
    package_data = tomllib.loads((ROOT / "api" / "pyproject.toml").read_text())["tool"][
        "setuptools"
    ]["package-data"]["ftaas_api"]
    package = STATIC.parents[1]  # ftaas_api/: the globs are relative to it
    shipped = {path for pattern in package_data for path in package.glob(pattern)}
    assert set(asset_paths().values()) <= shipped
