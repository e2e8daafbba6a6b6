"""``client.datasets``: upload (with progress), validate, report, list, retrieve, delete."""

from __future__ import annotations

from glmft_client._http import AsyncHTTP, RequestSpec, SyncHTTP
from glmft_client._uploads import FileInput, ProgressCallback, ProgressReader, open_upload
from glmft_client.types import Dataset, DatasetWithReport, Page, ValidationReport

CONTENT_TYPE = "application/jsonl"


def _upload_spec(
    name: str, reader: ProgressReader, model: str | None, timeout: float | None
) -> RequestSpec:
    return RequestSpec(
        "POST",
        "/datasets",
        files={"file": (name, reader, CONTENT_TYPE)},
        data={"model": model} if model else None,
        timeout=timeout,
    )


def _list_spec(limit: int, after: str | None) -> RequestSpec:
    return RequestSpec("GET", "/datasets", params={"limit": limit, "after": after})


class Datasets:
    """Datasets: uploaded ``.jsonl``/``.json`` files, validated by the server on arrival."""

    def __init__(self, http: SyncHTTP) -> None:
        self._http = http

    def upload(
        self,
        file: FileInput,
        *,
        filename: str | None = None,
        model: str | None = None,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> DatasetWithReport:
        """Upload a data file; the answer carries the full line-numbered validation report.

        Args:
            file: a path, bytes or a seekable binary file object.
            filename: the name to store (default: the path's name).
            model: a registry model: adds token statistics under its tokenizer.
            on_progress: called with ``(bytes sent, total bytes)``.
            timeout: seconds per attempt (validation of a large file takes a while).

        Returns:
            The dataset; ``valid`` is false when the report has errors.
        """
        with open_upload(file, filename, on_progress) as (name, reader):
            response = self._http.request(_upload_spec(name, reader, model, timeout))
        return DatasetWithReport.model_validate(response.json())

    def validate(
        self, file: FileInput, *, filename: str | None = None, model: str | None = None
    ) -> ValidationReport:
        """Check a file with the server's rules without keeping it (upload, then delete)."""
        dataset = self.upload(file, filename=filename, model=model)
        self.delete(dataset.id)
        return dataset.report

    def retrieve(self, dataset_id: str) -> Dataset:
        """One dataset."""
        response = self._http.request(RequestSpec("GET", f"/datasets/{dataset_id}"))
        return Dataset.model_validate(response.json())

    def report(self, dataset_id: str) -> ValidationReport:
        """A dataset's full validation report."""
        response = self._http.request(RequestSpec("GET", f"/datasets/{dataset_id}/report"))
        return ValidationReport.model_validate(response.json())

    def list(self, *, limit: int = 20, after: str | None = None) -> Page[Dataset]:
        """Your datasets, newest first."""
        response = self._http.request(_list_spec(limit, after))
        return Page[Dataset].model_validate(response.json())

    def delete(self, dataset_id: str) -> None:
        """Delete a dataset and its files (409 while an unfinished job uses it)."""
        self._http.request(RequestSpec("DELETE", f"/datasets/{dataset_id}"))


class AsyncDatasets:
    """The async flavour of :class:`Datasets`."""

    def __init__(self, http: AsyncHTTP) -> None:
        self._http = http

    async def upload(
        self,
        file: FileInput,
        *,
        filename: str | None = None,
        model: str | None = None,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> DatasetWithReport:
        """See :meth:`Datasets.upload`."""
        # the file is read in the event loop's thread: chunks are small and local
        with open_upload(file, filename, on_progress) as (name, reader):
            response = await self._http.request(_upload_spec(name, reader, model, timeout))
        return DatasetWithReport.model_validate(response.json())

    async def validate(
        self, file: FileInput, *, filename: str | None = None, model: str | None = None
    ) -> ValidationReport:
        """See :meth:`Datasets.validate`."""
        dataset = await self.upload(file, filename=filename, model=model)
        await self.delete(dataset.id)
        return dataset.report

    async def retrieve(self, dataset_id: str) -> Dataset:
        """One dataset."""
        response = await self._http.request(RequestSpec("GET", f"/datasets/{dataset_id}"))
        return Dataset.model_validate(response.json())

    async def report(self, dataset_id: str) -> ValidationReport:
        """A dataset's full validation report."""
        response = await self._http.request(RequestSpec("GET", f"/datasets/{dataset_id}/report"))
        return ValidationReport.model_validate(response.json())

    async def list(self, *, limit: int = 20, after: str | None = None) -> Page[Dataset]:
        """Your datasets, newest first."""
        response = await self._http.request(_list_spec(limit, after))
        return Page[Dataset].model_validate(response.json())

    async def delete(self, dataset_id: str) -> None:
        """Delete a dataset and its files."""
        await self._http.request(RequestSpec("DELETE", f"/datasets/{dataset_id}"))
