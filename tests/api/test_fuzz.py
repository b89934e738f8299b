"""Schemathesis against the live server's own OpenAPI schema, with two tenants' keys: no 5xx,
and every response matches the schema. Seeded and bounded so it is repeatable and quick."""

from __future__ import annotations

import httpx2
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from tests.support.data import taught_dataset
from tests.support.jobs import create_job, upload

EXAMPLES_PER_OPERATION = 12


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_every_operation_survives_generated_requests(
    api_url: str, api_key: str, other_key: str, http: httpx2.Client
) -> None:
    job = create_job(http, training_file=upload(http, taught_dataset()))  # real ids to hit too
    http.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    schema = schemathesis.openapi.from_dict(httpx2.get(f"{api_url}/openapi.json").json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def exercise(case: schemathesis.Case) -> None:
            for key in (api_key, other_key):
                case.call_and_validate(
                    base_url=api_url,
                    headers={"Authorization": f"Bearer {key}"},
                    checks=[
                        not_a_server_error,
                        response_schema_conformance,
                        status_code_conformance,
                    ],
                )

        exercise()
