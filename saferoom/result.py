"""Query results: Arrow record batches underneath, pandas and polars on request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from saferoom.display import result_html
from saferoom.engines.base import FORWARDED, SENDERS, Sent
from saferoom.errors import EngineError, SaferoomError

if TYPE_CHECKING:
    import socket

    import pandas
    import polars


class Result:
    """Rows a guarded query returned, cut at the role's ``max_rows``.

    ``truncated`` is true when the query had more rows than the role may
    receive; only the first ``max_rows`` are kept. ``notices`` say so in words, and name each table whose
    rows the role's filter removed (see :mod:`saferoom.notices`).
    """

    def __init__(
        self, reader: pa.RecordBatchReader, *, max_rows: int | None, sql: str = "", tables: tuple[str, ...] = (),
        notices: tuple[str, ...] = (), role: str = "",
    ) -> None:
        self._reader: pa.RecordBatchReader | None = reader
        self.tables = tables
        self.role = role
        self._notices = notices  # known before any row is read: the row filters of the tables read
        self.schema: pa.Schema = reader.schema
        self.max_rows = max_rows
        self.sql = sql
        self._batches: list[pa.RecordBatch] = []
        self._read = 0  # rows read from the engine so far
        self._truncated = False
        self._messages = FORWARDED.get(reader)
        self._sender = SENDERS.get(reader)

    def batches(self) -> Iterator[pa.RecordBatch]:
        """Stream the record batches; a second call replays what was read."""
        yield from self._batches
        while self._reader is not None:
            batch = self._next()
            if batch is None:
                break
            self._batches.append(batch)
            yield batch

    def stream(self) -> Iterator[pa.RecordBatch]:
        """One pass over the batches, keeping none of them: for a server that sends each on as it comes."""
        while self._reader is not None:
            batch = self._next()
            if batch is None:
                break
            yield batch

    def ipc_message(self, batch: pa.RecordBatch) -> pa.Buffer | None:
        """The Arrow IPC message ``batch`` arrived in from the engine, when it did and is whole (not cut at
        ``max_rows``): a server sends it on as it is."""
        return self._messages.of(batch) if self._messages is not None else None

    @property
    def sendable(self) -> bool:
        """Whether its engine's process can write it straight to a socket (:meth:`send_to`): nothing read yet."""
        return self._sender is not None and self._reader is not None and not self._read and not self._batches

    def send_to(self, sock: socket.socket, head: bytes, stall: float, memory: bool = False) -> Sent:
        """``head``, then the whole result as an Arrow IPC stream, cut at ``max_rows``, written to ``sock`` by the
        engine's process (a reader taking no byte for ``stall`` seconds has left), or into the reader's memory
        files (``memory``: saferoom/chunks.py); only when :attr:`sendable`."""
        assert self._sender is not None and self.sendable
        sent = self._sender(sock, head, self.max_rows, stall, memory)
        self._read, self._truncated = sent.rows, sent.truncated
        self._finish()
        return sent

    def _next(self) -> pa.RecordBatch | None:
        assert self._reader is not None
        try:
            batch = self._reader.read_next_batch()
        except StopIteration:
            self._finish()
            return None
        except pa.ArrowException as exc:
            self._finish()
            raise EngineError(f"the query failed while streaming: {str(exc).splitlines()[0]}") from None
        except SaferoomError:
            self._finish()
            raise
        room = None if self.max_rows is None else self.max_rows - self._read
        if room is not None and (batch.num_rows > room or (room == 0 and batch.num_rows)):
            self._truncated = True
            self._finish()
            batch = batch.slice(0, room) if room > 0 else None
        self._read += batch.num_rows if batch is not None else 0
        return batch

    def close(self) -> None:
        """Stop reading: the engine's query ends, and the rows not yet read are never read."""
        self._finish()

    def _finish(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _drain(self) -> None:
        for _ in self.batches():
            pass

    @property
    def truncated(self) -> bool:
        self._drain()
        return self._truncated

    @property
    def truncated_so_far(self) -> bool:
        """Whether the rows read so far were cut at ``max_rows``, reading no further (``truncated`` reads the rest
        first: a server whose client hung up must not)."""
        return self._truncated

    @property
    def notices(self) -> tuple[str, ...]:
        """Plain sentences on how the policy shaped this result: row filters, and a cut at ``max_rows``."""
        self._drain()
        return self.notices_so_far

    @property
    def notices_so_far(self) -> tuple[str, ...]:
        """The notices for the rows read so far, reading no further (as ``truncated_so_far``)."""
        if self._truncated and self.max_rows is not None:
            # notices read policies (sqlglot): a client whose results are never cut never loads them
            from saferoom.notices import cut_notice

            return (*self._notices, cut_notice(self.max_rows, self.role))
        return self._notices

    @property
    def num_rows(self) -> int:
        self._drain()
        return sum(b.num_rows for b in self._batches)

    def to_arrow(self) -> pa.Table:
        self._drain()
        return pa.Table.from_batches(self._batches, schema=self.schema)

    def to_pandas(self) -> pandas.DataFrame:
        frame: pandas.DataFrame = self.to_arrow().to_pandas()
        return frame

    def to_polars(self) -> polars.DataFrame:
        import polars

        frame = polars.from_arrow(self.to_arrow())
        assert isinstance(frame, polars.DataFrame)
        return frame

    def to_pylist(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.to_arrow().to_pylist()
        return rows

    def _repr_html_(self) -> str:
        """For notebooks: the first rows as an escaped HTML table, the row count and the notices."""
        return result_html(self)

    def __repr__(self) -> str:
        state = "streaming" if self._reader is not None else f"{self.num_rows} rows"
        cut = ", truncated" if self._truncated else ""
        return f"<Result {state}{cut}: {', '.join(self.schema.names)}>"
