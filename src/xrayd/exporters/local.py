"""The offline exporter: batches go into the local trace store instead of the X-Ray API. Batches
are queued for the store's writer thread (which holds callers back when it falls behind); a
document the store rejects is reported to the writer's ``on_reject`` and kept in the store's
rejected table for the viewer."""

from __future__ import annotations

from collections.abc import Sequence

from xrayd.exporters.xray import Unprocessed, UploadError
from xrayd.store.writer import StoreClosed, StoreWriter


class LocalExporter:
    name = "local"

    def __init__(self, writer: StoreWriter) -> None:
        self.writer = writer

    def put(self, docs: Sequence[bytes]) -> list[Unprocessed]:
        try:
            rejected = self.writer.write(docs, wait=False)
        except StoreClosed as exc:
            raise UploadError(str(exc), "other", False) from exc
        except TimeoutError as exc:
            raise UploadError(str(exc), "timeout", True) from exc
        except Exception as exc:  # sqlite3 errors: disk full, locked, corrupt
            raise UploadError(f"trace store: {exc}", "other", True) from exc
        return [Unprocessed(r.id, r.code, r.message) for r in rejected]

    def close(self) -> None:
        self.writer.close()
