"""A streamed export that writes its audit entry when the response ends, however it ends.

One mechanism for every audited export (the transfer gate's ``GET /api/v1/export/eligible``,
the cohort lists' exports): the body is the CSV header at once (CSV only), then one chunk per
page as the export reads it. A page counts as sent once the server has passed its chunk to the
connection while the client was still there (``stream_response``, ``listen_for_disconnect``)
and comes back for the next one; a chunk sent after the client went is not counted. When the
response ends (complete, or cut short), ``export.finish()`` writes the audit entry in a worker
thread; if that fails the body has already gone, so the failure is logged for the operator.
"""

from __future__ import annotations

import logging
from collections.abc import Generator

from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Send
from starlette.types import Scope as AsgiScope

from consentflow.exports import AuditedExport

_log = logging.getLogger(__name__)

MEDIA = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}


class AuditedStream(StreamingResponse):
    """The response of an audited export: its chunks as they are written."""

    def __init__(self, export: AuditedExport, filename: str | None = None) -> None:
        self.export = export
        self.gone = False
        self.yielded = self.delivered = 0
        self.chunks = self._chunks()
        super().__init__(self.chunks, media_type=MEDIA[export.format])
        self.headers["cache-control"] = "no-store"
        if filename:
            self.headers["content-disposition"] = f'attachment; filename="{filename}"'

    def _chunks(self) -> Generator[bytes]:
        """The body: the export's chunks, stopping after one the client did not receive."""
        chunks = self.export.chunks()
        try:
            for chunk in chunks:
                self.yielded += 1
                yield chunk
                if self.delivered < self.yielded:
                    return  # the client had gone: this chunk is not counted
        finally:
            chunks.close()

    async def stream_response(self, send: Send) -> None:
        """Starlette's, noting each chunk passed on while the client is connected."""
        start = {"type": "http.response.start", "status": self.status_code}
        await send({**start, "headers": self.raw_headers})
        async for chunk in self.body_iterator:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if not self.gone:
                self.delivered += 1
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def listen_for_disconnect(self, receive: Receive) -> None:
        await super().listen_for_disconnect(receive)
        self.gone = True

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await run_in_threadpool(self._end)

    def _end(self) -> None:
        self.chunks.close()
        try:
            self.export.finish()
        except Exception:  # the body has gone; the operator must hear of the missing entry
            _log.exception("the %s audit entry could not be written", self.export.action)
