"""Webhooks are accepted only for ports the deployment lets deliveries out on
(FTAAS_WEBHOOK_ALLOWED_PORTS, which the Kubernetes egress policy mirrors): a URL no delivery
could ever reach is a 400 when it is registered, not a webhook that silently never arrives."""

from __future__ import annotations

import pytest

from ftaas_core.webhooks import blocked_port
from tests.conftest import Backend, api_server, new_key, tenant_client


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("https://hooks.example/in", None),
        ("https://hooks.example:443/in", None),
        ("https://hooks.example:8443/in", 8443),
        ("http://hooks.example/in", 80),  # the scheme's port when none is written
    ],
)
def test_the_port_is_the_urls_or_its_schemes(url: str, port: int | None) -> None:
    reason = blocked_port(url, frozenset({443}))
    assert (reason is None) == (port is None)
    if port is not None:
        assert reason == f"port {port} is not open for webhooks here (allowed: 443)"
    assert blocked_port(url, None) is None  # unset: any port


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_registration_refuses_ports_the_deployment_blocks(backend: Backend) -> None:
    with (
        api_server(backend, FTAAS_WEBHOOK_ALLOWED_PORTS="[443]") as (url, _),
        tenant_client(url, new_key("webhook-ports")) as http,
    ):
        for blocked in ("https://hooks.example:8443/in", "http://hooks.example/in"):
            refused = http.post("/v1/webhooks", json={"url": blocked})
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["code"] == "invalid_webhook_url"
            assert "is not open for webhooks here" in refused.json()["error"]["message"]
        # FTAAS_WEBHOOK_ALLOW_PRIVATE_NETWORKS is on in tests: no lookup of the host.
        assert http.post("/v1/webhooks", json={"url": "https://hooks.example/in"}).is_success
        assert http.get("/v1/webhooks").json()["data"][0]["url"] == "https://hooks.example/in"
