"""The offline exporter: batches go into the local trace store instead of the X-Ray API. A call
returns once its documents are committed, so the upload worker counts them as sent only then; a
failed commit is an UploadError the worker retries like a failed upload (and counts as failed
when it gives up). Documents the store rejects come back as unprocessed, with the service's
error codes, and are kept in the store's rejected table for the viewer.

Each call waits for a commit: the daemon gives offline mode batches large enough (see
xrayd.offline.BATCH_SIZE) that its workers keep the store's parse/commit pipeline full."""

from __future__ import annotations

from collections.abc import Sequence

from xrayd.exporters.xray import Unprocessed, UploadError
from xrayd.store.writer import StoreClosed, StoreGone, StoreWriter

COMMIT_TIMEOUT = 60.0


class LocalExporter:
    name = "local"

    def __init__(self, writer: StoreWriter, timeout: float = COMMIT_TIMEOUT) -> None:
        self.writer = writer
        self.timeout = timeout

    def put(self, docs: Sequence[bytes]) -> list[Unprocessed]:
        try:
            rejected = self.writer.write(docs, wait=True, timeout=self.timeout)
        except StoreClosed as exc:
            raise UploadError(str(exc), "store_closed", False) from exc
        except StoreGone as exc:
            raise UploadError(str(exc), "store_gone", False) from exc
        except TimeoutError as exc:
            raise UploadError(str(exc), "timeout", True) from exc
        except Exception as exc:  # sqlite3 errors: disk full, locked, corrupt
            raise UploadError(f"trace store: {exc}", "store_error", True) from exc
        return [Unprocessed(r.id, r.code, r.message) for r in rejected]

    def close(self) -> None:
        self.writer.close()
