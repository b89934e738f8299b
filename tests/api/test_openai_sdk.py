"""The official openai SDK drives files and jobs against ftaas unchanged."""

from __future__ import annotations

import openai
import pytest

from tests.support.data import preference_dataset, taught_dataset


@pytest.fixture
def sdk(api_url: str, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api_url}/v1", api_key=api_key, max_retries=0)


def test_files_and_jobs_through_the_openai_sdk(sdk: openai.OpenAI) -> None:
    uploaded = sdk.files.create(file=("train.jsonl", taught_dataset()), purpose="fine-tune")
    assert uploaded.status == "processed"
    assert sdk.files.retrieve(uploaded.id).bytes == len(taught_dataset())
    assert sdk.files.content(uploaded.id).read() == taught_dataset()

    job = sdk.fine_tuning.jobs.create(
        model="tiny",
        training_file=uploaded.id,
        suffix="sdk",
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "lora_r": 4}},  # type: ignore[typeddict-unknown-key]
        },
    )
    assert job.status == "queued"
    assert job.hyperparameters.n_epochs == 2
    assert sdk.fine_tuning.jobs.retrieve(job.id).id == job.id
    assert job.id in [j.id for j in sdk.fine_tuning.jobs.list(limit=5)]
    events = sdk.fine_tuning.jobs.list_events(job.id)
    assert events.data[-1].message.startswith("Created fine-tuning job")
    assert list(sdk.fine_tuning.jobs.checkpoints.list(job.id)) == []

    cancelled = sdk.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        sdk.fine_tuning.jobs.cancel(job.id)
    with pytest.raises(openai.NotFoundError):
        sdk.fine_tuning.jobs.retrieve("ftjob-missing")
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.fine_tuning.jobs.create(model="nope", training_file=uploaded.id)
    assert bad.value.code == "model_not_available"
    assert "tiny" in [m.id for m in sdk.models.list()]
    assert sdk.files.delete(uploaded.id).deleted is True


def test_bad_key_is_an_authentication_error(api_url: str) -> None:
    sdk = openai.OpenAI(base_url=f"{api_url}/v1", api_key="ftk_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        sdk.files.list()


def test_dpo_jobs_through_the_openai_sdk(sdk: openai.OpenAI) -> None:
    pairs = sdk.files.create(file=("pairs.jsonl", preference_dataset()), purpose="fine-tune")
    chats = sdk.files.create(file=("chats.jsonl", taught_dataset()), purpose="fine-tune")
    assert pairs.status == "processed"

    job = sdk.fine_tuning.jobs.create(
        model="tiny",
        training_file=pairs.id,
        method={
            "type": "dpo",
            "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 2, "lora_r": 4}},  # type: ignore[typeddict-unknown-key]
        },
    )
    assert job.method is not None and job.method.type == "dpo" and job.method.dpo is not None
    hyperparameters = job.method.dpo.hyperparameters
    assert (hyperparameters.beta, hyperparameters.n_epochs) == (0.2, 2)
    assert sdk.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    auto = sdk.fine_tuning.jobs.create(model="tiny", training_file=pairs.id, method={"type": "dpo"})
    assert auto.method is not None and auto.method.dpo is not None
    assert auto.method.dpo.hyperparameters.beta == "auto"
    sdk.fine_tuning.jobs.cancel(auto.id)

    with pytest.raises(openai.BadRequestError, match="holds supervised examples"):
        sdk.fine_tuning.jobs.create(model="tiny", training_file=chats.id, method={"type": "dpo"})
    with pytest.raises(openai.BadRequestError, match="holds preference examples"):
        sdk.fine_tuning.jobs.create(model="tiny", training_file=pairs.id)
    with pytest.raises(openai.NotFoundError):
        sdk.fine_tuning.jobs.create(model="ft:tiny:acme::ftjob-missing", training_file=pairs.id)
