"""``/v1/models``: the deployment's base models and the caller's fine-tuned models."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from ftaas.types import JobStatus, Model, Page
from ftaas_api.deps import DB, Config, TenantId
from ftaas_core.models import Job

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("")
def list_models(tenant: TenantId, db: DB, settings: Config) -> Page[Model]:
    models = [Model(id=name, created=0, owned_by="ftaas") for name in sorted(settings.models)]
    with db.session() as session:
        jobs = session.scalars(
            select(Job)
            .where(Job.tenant_id == tenant, Job.status == JobStatus.SUCCEEDED.value)
            .order_by(Job.seq.desc())
        ).all()
    models += [
        Model(id=job.fine_tuned_model, created=job.finished_at or job.created_at, owned_by=tenant)
        for job in jobs
        if job.fine_tuned_model
    ]
    return Page[Model](data=models)
