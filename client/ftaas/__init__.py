"""The ftaas Python SDK: ``Client``/``AsyncClient``, typed errors, and the wire models.

It depends only on httpx2, pydantic and tqdm, never on the server's code.
"""

from ftaas._client import AsyncClient, Client
from ftaas.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    FtaasError,
    IntegrityError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    WaitTimeoutError,
)
from ftaas.types import (
    Checkpoint,
    FileDeleted,
    FileObject,
    FileReport,
    FineTuningJob,
    JobEvent,
    Model,
    Page,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEndpointDeleted,
)

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "Checkpoint",
    "Client",
    "ConflictError",
    "FileDeleted",
    "FileObject",
    "FileReport",
    "FineTuningJob",
    "FtaasError",
    "IntegrityError",
    "InternalServerError",
    "JobEvent",
    "Model",
    "NotFoundError",
    "Page",
    "PermissionDeniedError",
    "RateLimitError",
    "WaitTimeoutError",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEndpointDeleted",
]
