"""``/datasets``: upload (streamed, validated), list, read, report, delete."""

from __future__ import annotations

import shutil
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as PathParam
from starlette.concurrency import run_in_threadpool

from api.deps import EngineDep, SessionDep, SettingsDep, TenantDep
from api.schemas.common import Page, error_responses
from api.schemas.datasets import (
    DatasetPublic,
    DatasetWithReport,
    ReportPublic,
    dataset_public,
    dataset_with_report,
    report_public,
)
from api.services import datasets as service
from api.uploads import receive_upload
from core.models import new_id

router = APIRouter(prefix="/datasets", tags=["datasets"])
DatasetId = Annotated[str, PathParam(description="The dataset id.", examples=["ds-9c1f0e2d3b4a"])]

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "A .jsonl (one conversation per line) or .json "
                            "file, or a .zip / .tar.gz holding train.jsonl (and dev.jsonl) "
                            "plus the images they name by relative path (vision models).",
                        },
                        "model": {
                            "type": "string",
                            "description": "A registry model: adds token statistics under its "
                            "tokenizer to the report.",
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    status_code=201,
    response_model=DatasetWithReport,
    responses=error_responses(404, 413),
    openapi_extra=_UPLOAD_BODY,
)
async def upload_dataset(
    request: Request, settings: SettingsDep, tenant: TenantDep, engine: EngineDep
) -> DatasetWithReport:
    """Upload a dataset; it is validated and the full line-numbered report is returned."""
    dataset_id = new_id("ds")
    directory = service.dataset_dir(settings.artifacts, tenant, dataset_id)
    upload = await receive_upload(request, directory, settings.limits.max_upload_bytes)
    try:
        dataset = await run_in_threadpool(
            service.store_upload,
            engine=engine,
            settings=settings,
            tenant=tenant,
            dataset_id=dataset_id,
            upload=upload,
        )
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return dataset_with_report(dataset)


@router.get("", response_model=Page[DatasetPublic], responses=error_responses())
def list_datasets(
    session: SessionDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
) -> Page[DatasetPublic]:
    """Your datasets, newest first."""
    rows, has_more, cursor = service.list_datasets(
        session=session, tenant=tenant, after=after, limit=limit
    )
    return Page(data=[dataset_public(d) for d in rows], has_more=has_more, next_cursor=cursor)


@router.get("/{dataset_id}", response_model=DatasetPublic, responses=error_responses(404))
def get_dataset(dataset_id: DatasetId, session: SessionDep, tenant: TenantDep) -> DatasetPublic:
    """One dataset."""
    return dataset_public(service.get_dataset(session, tenant, dataset_id))


@router.get("/{dataset_id}/report", response_model=ReportPublic, responses=error_responses(404))
def get_report(dataset_id: DatasetId, session: SessionDep, tenant: TenantDep) -> ReportPublic:
    """The dataset's full validation report (line-numbered errors and warnings, token stats)."""
    return report_public(service.get_dataset(session, tenant, dataset_id))


@router.delete(
    "/{dataset_id}", status_code=204, response_class=Response, responses=error_responses(404, 409)
)
def delete_dataset(
    dataset_id: DatasetId,
    session: SessionDep,
    tenant: TenantDep,
    force: Annotated[
        bool,
        Query(description="Delete even though failed or cancelled jobs could resume on it."),
    ] = False,
) -> Response:
    """Delete a dataset and its files; 409 `dataset_in_use` while a job that has not succeeded
    uses it (a failed or cancelled one could resume on it), unless `force`."""
    dataset = service.get_dataset(session, tenant, dataset_id)
    service.delete_dataset(session=session, dataset=dataset, force=force)
    return Response(status_code=204)
