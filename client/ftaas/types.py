"""The wire format: every object the API returns, defined once and shared by API and SDK.

Models accept fields they do not know, so an older SDK keeps working against a newer server.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

T = TypeVar("T")


class JobStatus(StrEnum):
    """A fine-tuning job's status: OpenAI's, plus ``pausing``/``paused`` for its pause route.
    The server's lifecycle (``ftaas_core.lifecycle``) owns the moves between them."""

    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class WireModel(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorDetail(WireModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(WireModel):
    error: ErrorDetail


class _OmitsNull(WireModel):
    """A model whose ``omit_null`` fields OpenAI types as never null: absent when empty."""

    omit_null: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_null(self, handler: SerializerFunctionWrapHandler):
        """(No return annotation: pydantic would document the model as that type instead.)"""
        data = handler(self)
        for name in self.omit_null:
            if isinstance(data, dict) and data.get(name) is None:
                data.pop(name, None)
        return data


class FileObject(_OmitsNull):
    omit_null = ("status_details", "expires_at")

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    status_details: str | None = None
    expires_at: int | None = None


class Upload(_OmitsNull):
    """OpenAI's Uploads API: a file sent in parts; ``file`` is there once it is completed.
    ``status`` is pending, completed, cancelled or expired (an hour after it was created)."""

    omit_null = ("file",)

    id: str
    object: Literal["upload"] = "upload"
    bytes: int
    created_at: int
    expires_at: int
    filename: str
    purpose: str
    status: str
    file: FileObject | None = None


class UploadPart(WireModel):
    id: str
    object: Literal["upload.part"] = "upload.part"
    created_at: int
    upload_id: str


class FileDeleted(WireModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class JobError(WireModel):
    code: str
    message: str
    param: str | None = None


class JobHyperparameters(WireModel):
    """OpenAI's three fields; LoRA extensions ride along as extra fields."""

    n_epochs: int | Literal["auto"] | None = None
    batch_size: int | Literal["auto"] | None = None
    learning_rate_multiplier: float | Literal["auto"] | None = None


class SupervisedMethod(WireModel):
    hyperparameters: JobHyperparameters


class DpoMethod(WireModel):
    """DPO's hyperparameters: the supervised ones, ``beta`` and our LoRA ones (extra fields)."""

    hyperparameters: JobHyperparameters


class Method(_OmitsNull):
    """Only the job's own method's settings: OpenAI types each as an object, never null."""

    omit_null = ("supervised", "dpo")

    type: str
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None


class FineTuningJob(WireModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: JobHyperparameters
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: JobStatus | str  # a status a newer server added stays readable
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    estimated_finish: int | None
    integrations: list[Any] | None = None
    metadata: dict[str, str] | None = None
    method: Method | None = None
    suffix: str | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_STATUSES


class JobEvent(WireModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: str = "message"
    data: dict[str, Any] | None = None


class Checkpoint(WireModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, Any]


class Model(WireModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class Page(WireModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


class WebhookEndpoint(WireModel):
    """Where a tenant's job events are POSTed; ``secret`` is shown only when it is created."""

    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    created_at: int
    url: str
    events: list[str]
    secret: str | None = None


class WebhookEndpointDeleted(WireModel):
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: bool


class WebhookDelivery(WireModel):
    """One event sent (or being retried) to one endpoint; ``id`` is the ``webhook-id`` header."""

    id: str
    object: Literal["webhook.delivery"] = "webhook.delivery"
    type: str
    job_id: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: int
    delivered_at: int | None
    next_attempt_at: int | None


class ReportError(WireModel):
    """A line that cannot train; ``field`` is the JSON path at fault, when there is one."""

    line: int
    field: str | None = None
    message: str


class TokenStats(WireModel):
    """Tokens per example as rendered for the model, before truncation; ``trained`` counts the
    tokens the loss sees in one epoch, after truncation (what a job bills per epoch)."""

    min: int
    mean: float
    p95: int
    max: int
    total: int
    trained: int


class TruncatedExample(WireModel):
    """An example longer than max_seq_length (a pair: its longer row); ``dropped`` when
    truncation leaves nothing to train on (a pair: either answer), so training skips it."""

    line: int
    n_tokens: int
    dropped: bool


class RepeatedExample(WireModel):
    """An example seen before: ``first_line`` is where the same example first appears, in the
    same file for duplicates and in the training file for train/validation overlap."""

    line: int
    first_line: int


class ExamplePreview(WireModel):
    """The first example as the model sees it, trained tokens wrapped in ``⟦…⟧``."""

    line: int
    text: str
    n_tokens: int
    n_trained_tokens: int
    truncated: bool


class PreferenceFindings(WireModel):
    """A preference file's pairs: the tokens of their prompts and of each answer (``trained``:
    what the loss sees after truncation), and the lines of pairs whose two answers are
    identical, which teach nothing (their DPO loss has no gradient)."""

    prompt_tokens: TokenStats
    preferred_tokens: TokenStats
    non_preferred_tokens: TokenStats
    n_identical: int
    identical: list[int]


class FileFindings(WireModel):
    """One file's findings. Lists are capped (the report's limit); their ``n_*`` counts are not.
    ``n_examples`` counts examples that parse and render with the model's chat template;
    ``format`` is ``supervised`` or ``preference`` (for DPO), with ``preference`` its pairs'."""

    n_lines: int
    n_bytes: int
    n_examples: int
    n_errors: int
    errors: list[ReportError]
    tokens: TokenStats | None
    n_truncated: int
    truncated: list[TruncatedExample]
    n_duplicates: int
    duplicates: list[RepeatedExample]
    format: str | None = None
    preference: PreferenceFindings | None = None


class FileReport(FileFindings):
    """A dry run of training on a file with a model's tokenizer: the training file's findings,
    the validation file's and their overlap, and a preview of what is trained."""

    object: Literal["file.report"] = "file.report"
    model: str
    max_seq_length: int
    validation: FileFindings | None = None
    n_overlapping: int = 0
    overlapping: list[RepeatedExample] = []
    preview: ExamplePreview | None = None


class Sample(WireModel):
    """One line of a job's ``samples.jsonl`` result file: a prompt the job saw (a validation one
    when it had a validation file), its reference answer, and the base and fine-tuned models'
    greedy answers."""

    prompt: list[dict[str, str]] | str
    reference: str
    base: str
    fine_tuned: str


class Manifest(WireModel):
    """What a finished job trained on and with: enough to reproduce its adapter."""

    job_id: str
    fine_tuned_model: str
    base_model: dict[str, Any]
    datasets: dict[str, Any]
    seed: int
    hyperparameters: dict[str, Any]
    libraries: dict[str, str]
    device: str
    # QLoRA's 4-bit base (load_in_4bit, quant_type, double_quant, compute_dtype); None: none.
    quantization: dict[str, Any] | None = None
    # The processes it trained on: world_size, backend (nccl, gloo), and sharding (replicate or
    # fsdp2; None in one process).
    training_processes: dict[str, Any] | None = None
