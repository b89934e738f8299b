"""Service configuration from ``FTAAS_*`` environment variables, read once and cached."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ftaas_core.builtin_models import builtin_catalogue


class Settings(BaseSettings):
    """Everything has an embedded default under ``data_dir``, so nothing needs to be set."""

    model_config = SettingsConfigDict(env_prefix="FTAAS_", extra="ignore")

    data_dir: Path = Path(".ftaas")
    database_url: str | None = None
    redis_url: str | None = None
    storage_url: str | None = None
    s3_endpoint_url: str | None = None
    models: dict[str, str] = Field(default_factory=dict)
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    upload_tmp_max_age_seconds: int = Field(default=24 * 3600, gt=0)
    # Where uploads stream before they are validated (relative: under data_dir); holds nothing
    # else, so the janitor may remove whatever has been left there longer than
    # upload_tmp_max_age_seconds. Its disk must hold max_upload_bytes * max_concurrent_uploads.
    upload_tmp_dir: Path = Path("tmp")
    max_concurrent_uploads: int = Field(default=4, ge=1)
    # The Uploads API (/v1/uploads): OpenAI's 8 GB in all, and an hour to send the parts.
    uploads_max_bytes: int = Field(default=8 * 1024**3, gt=0)
    uploads_expire_seconds: int = Field(default=3600, gt=0)
    worker_lease_seconds: int = Field(default=60, ge=2)
    outage_retry_seconds: float = Field(default=120.0, gt=0)
    max_job_retries: int = Field(default=3, ge=0)
    # Training processes per job (one per GPU); None: one per visible CUDA device, 1 without.
    nproc_per_node: int | None = Field(default=None, ge=1, le=64)
    # How those processes hold the base: "replicate" (each a copy; only the adapter's gradients
    # travel), "fsdp2" (sharded), or "auto" (replicate what fits each device 4 times over).
    sharding: Literal["auto", "fsdp2", "replicate"] = "auto"
    job_timeout_seconds: int = Field(default=7 * 24 * 3600, gt=0)
    queue_name: str = "ftaas-training"
    min_examples: int = Field(default=10, ge=1)
    max_active_jobs: int = Field(default=20, ge=1)
    rate_limit_per_minute: int = Field(default=1200, ge=1)
    max_request_bytes: int = Field(default=1024 * 1024, ge=1024)
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_backoff_seconds: float = Field(default=5.0, gt=0)
    webhook_allow_private_networks: bool = False
    # None: any port. Set it to the ports the deployment's egress policy opens.
    webhook_allowed_ports: frozenset[Annotated[int, Field(ge=1, le=65535)]] | None = None
    # Per process, against PostgreSQL's max_connections (README: Configuration).
    database_pool_size: int = Field(default=5, ge=1)
    database_max_overflow: int = Field(default=0, ge=0)
    database_connect_timeout_seconds: int = Field(default=10, ge=2)

    @model_validator(mode="after")
    def _builtin_models(self) -> Settings:
        """With no FTAAS_MODELS, the catalogue is the built-in models that are installed."""
        if "models" not in self.model_fields_set:
            self.models = builtin_catalogue(self.data_dir)
        return self

    @model_validator(mode="after")
    def _upload_tmp_dir_in_data_dir(self) -> Settings:
        self.upload_tmp_dir = (self.data_dir / self.upload_tmp_dir).resolve()
        return self

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'ftaas.db'}"

    @property
    def object_store_url(self) -> str:
        return self.storage_url or (self.data_dir.resolve() / "objects").as_uri()

    @property
    def embedded_redis_path(self) -> Path:
        return self.data_dir.resolve() / "redis.db"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests call ``get_settings.cache_clear()`` after changing env."""
    return Settings()
