"""Webhook URLs come from tenants: only public destinations are called unless allowed."""

from __future__ import annotations

import httpx2
import pytest

from ftaas_core.webhooks import Claim, _send, refusal

PRIVATE = [
    "http://127.0.0.1:8080/hook",
    "http://localhost/hook",
    "http://10.1.2.3/hook",
    "http://192.168.0.7/hook",
    "http://169.254.169.254/latest/meta-data/",  # the cloud metadata endpoint
    "http://0.0.0.0/hook",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",  # loopback dressed as IPv6
    "http://[fd00::1]/hook",
]


@pytest.mark.parametrize("url", PRIVATE)
def test_private_destinations_are_refused_with_the_reason(url: str) -> None:
    reason = refusal(url)
    assert reason is not None and "not a public address" in reason


@pytest.mark.parametrize("url", ["https://8.8.8.8/hook", "http://[2606:4700:4700::1111]/h"])
def test_public_addresses_pass(url: str) -> None:
    assert refusal(url) is None


def test_a_refused_delivery_sends_nothing_and_says_why() -> None:
    def never(request: httpx2.Request) -> httpx2.Response:
        raise AssertionError(f"sent to {request.url}")

    claim = Claim("whd_1", "http://169.254.169.254/hook", "whsec_x", "{}", 1)
    with httpx2.Client(transport=httpx2.MockTransport(never)) as client:
        outcome = _send(client, claim, allow_private=False)
        assert outcome.status_code is None
        assert outcome.error is not None and outcome.error.startswith("Not sent:")
        assert "169.254.169.254" in outcome.error
