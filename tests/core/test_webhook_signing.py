"""Webhook signing and payloads against the official openai SDK's verifier: what we send is what
``ftaas.webhooks.unwrap`` accepts, and tampering or replaying is caught."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import get_args

import openai
import pytest
from openai.types.webhooks import (
    FineTuningJobCancelledWebhookEvent,
    FineTuningJobFailedWebhookEvent,
    FineTuningJobSucceededWebhookEvent,
)

from ftaas_core.webhooks import (
    EVENT_TYPES,
    MAX_BACKOFF,
    EventType,
    event_payload,
    new_event_id,
    new_secret,
    retry_delay,
    signed_headers,
)

OPENAI = openai.OpenAI(api_key="x")
OPENAI_CLASSES = {
    "fine_tuning.job.succeeded": FineTuningJobSucceededWebhookEvent,
    "fine_tuning.job.failed": FineTuningJobFailedWebhookEvent,
    "fine_tuning.job.cancelled": FineTuningJobCancelledWebhookEvent,
}


Signed = tuple[str, dict[str, str], str]
"""A body, its headers, and the secret that signed it."""


def signed(type: EventType = "fine_tuning.job.succeeded", timestamp: int | None = None) -> Signed:
    secret, event_id = new_secret(), new_event_id()
    body = event_payload(event_id, type, "ftjob-abc", 1_700_000_000)
    headers = signed_headers(secret, event_id, body, timestamp or int(time.time()))
    return body, headers, secret


@pytest.mark.parametrize("type", EVENT_TYPES)
def test_openai_unwraps_each_event_type(type: EventType) -> None:
    body, headers, secret = signed(type)
    event = OPENAI.webhooks.unwrap(body, headers, secret=secret)
    assert isinstance(event, OPENAI_CLASSES[type])
    assert event.type == type
    assert event.object == "event"
    assert event.data.id == "ftjob-abc"
    assert event.created_at == 1_700_000_000
    assert event.id == headers["webhook-id"]
    assert OPENAI.webhooks.unwrap(body.encode(), headers, secret=secret) == event  # as bytes too


def test_payload_has_exactly_openais_fields() -> None:
    body = json.loads(event_payload("evt_1", "fine_tuning.job.failed", "ftjob-x", 5))
    assert body == {
        "id": "evt_1",
        "object": "event",
        "created_at": 5,
        "type": "fine_tuning.job.failed",
        "data": {"id": "ftjob-x"},
    }
    assert set(get_args(EventType)) == set(OPENAI_CLASSES)


def test_secret_and_ids_have_openais_shape() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
    assert new_event_id().startswith("evt_")
    assert new_event_id() != new_event_id()


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda b, h, s: (b.replace("ftjob-abc", "ftjob-evil"), h, s), id="body"),
        pytest.param(lambda b, h, s: (b, h | {"webhook-id": "evt_other"}, s), id="id"),
        pytest.param(
            lambda b, h, s: (b, h | {"webhook-timestamp": str(int(time.time()) - 1)}, s),
            id="timestamp",
        ),
        pytest.param(lambda b, h, s: (b, h, new_secret()), id="secret"),
    ],
)
def test_tampering_is_rejected(tamper: Callable[[str, dict[str, str], str], Signed]) -> None:
    body, headers, secret = tamper(*signed())
    with pytest.raises(openai.InvalidWebhookSignatureError):
        OPENAI.webhooks.unwrap(body, headers, secret=secret)


def test_an_old_signature_is_rejected_as_a_replay() -> None:
    body, headers, secret = signed(timestamp=int(time.time()) - 301)
    with pytest.raises(openai.InvalidWebhookSignatureError, match="too old"):
        OPENAI.webhooks.unwrap(body, headers, secret=secret)


def test_retry_delay_doubles_with_jitter_and_is_capped() -> None:
    for attempts in range(1, 8):
        nominal = 5.0 * 2 ** (attempts - 1)
        assert 0.75 * nominal <= retry_delay(attempts, 5.0) <= nominal
    assert 0.75 * MAX_BACKOFF <= retry_delay(40, 5.0) <= MAX_BACKOFF
    assert retry_delay(10_000, 5.0) <= MAX_BACKOFF
