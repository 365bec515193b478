"""The inference log's local journal: what is converted but not yet written survives a crash.

Five times a second the service converts queued log rows into Arrow tables; the same tick
appends each table to a journal file on local disk (one frame each: a magic number, a length
and an Arrow IPC stream whose metadata says which model version and day it belongs to). When a
batch is handed to the writer, the journal file is sealed and a new one begun; once the batch
is written, its files are deleted. So after a crash (SIGKILL, out of memory) only the rows
answered since the last tick are lost: the next service started on the same folder finds the
journal files nobody holds, replays their rows into the sink at its first write, and deletes
them. A crash between a write and the deletion writes those rows twice (at least once, never
lost); ``request_id`` tells the copies apart. The journal is not synced to the device: a crash
of the whole machine can lose what the operating system had not written yet.

Each journal file is held with an exclusive ``flock`` by the process that writes or adopted it,
so instances sharing the folder only ever replay the files of processes that are gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

logger = logging.getLogger(__name__)

MAGIC = b"MLJ1"
HEADER = struct.Struct("<4sQ")
"""A frame: the magic number and the length of the Arrow IPC stream that follows."""
KEY_METADATA = b"mlops.log_key"
SUFFIX = ".journal"

LogKey = tuple[str, str, str]
"""(model, version, UTC day): the rows one write holds."""


@dataclass
class Segment:
    """One journal file, held (locked) by this process until it is deleted or released."""

    path: Path
    fd: int


class LogSpool:
    """Append-only journal files of the inference log under ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._current: Segment | None = None
        self._batch: list[Segment] = []
        """The journal files of what has been converted since the last ``seal``."""

    def append(self, key: LogKey, table: pa.Table) -> None:
        """Journal one converted table of ``key``.

        Raises:
            OSError: the journal could not be written (the caller keeps the rows in memory).
        """
        data = frame(key, table)
        if self._current is None:
            self._current = self._open_segment()
            self._batch.append(self._current)
        fd = self._current.fd
        size = os.lseek(fd, 0, os.SEEK_END)
        try:
            _write_all(fd, data)
        except OSError:
            with contextlib.suppress(OSError):  # keep the file readable up to its last frame
                os.ftruncate(fd, size)
            self._current = None  # the next append starts a new file
            raise

    def seal(self) -> list[Segment]:
        """End the batch's journal files (a writer takes the batch); the next append starts one."""
        sealed, self._batch, self._current = self._batch, [], None
        return sealed

    def discard(self, segments: list[Segment]) -> None:
        """Delete journal files whose rows are written."""
        for segment in segments:
            try:
                segment.path.unlink(missing_ok=True)
            except OSError as error:
                logger.error(
                    "Could not delete the inference-log journal %s: %s", segment.path, error
                )
            os.close(segment.fd)

    def release(self, segments: list[Segment]) -> None:
        """Let go of journal files without deleting them (a later start replays them)."""
        for segment in segments:
            os.close(segment.fd)

    def close(self) -> None:
        """Release the current journal file: what it holds is replayed by the next start."""
        self.release(self.seal())

    def adopt_orphans(self) -> list[tuple[Segment, list[tuple[LogKey, pa.Table]]]]:
        """Journal files left by processes that are gone, held now, with the tables they hold."""
        if not self.folder.is_dir():
            return []
        adopted = []
        for path in sorted(self.folder.glob(f"*{SUFFIX}")):
            segment = _try_lock(path)
            if segment is None:  # a live process holds it
                continue
            adopted.append((segment, read_frames(path)))
        return adopted

    def _open_segment(self) -> Segment:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        hidden = self.folder / f".{name}.new"
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path = self.folder / f"{name}{SUFFIX}"
        os.rename(hidden, path)  # visible to others only once locked
        return Segment(path, fd)


def frame(key: LogKey, table: pa.Table) -> bytes:
    """One journal frame: the table as an Arrow IPC stream, with ``key`` in its metadata."""
    tagged = table.replace_schema_metadata({KEY_METADATA: json.dumps(list(key)).encode()})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, tagged.schema) as writer:
        writer.write_table(tagged)
    payload = sink.getvalue()
    return HEADER.pack(MAGIC, payload.size) + payload.to_pybytes()


def read_frames(path: Path) -> list[tuple[LogKey, pa.Table]]:
    """The tables of a journal file, up to the first incomplete or damaged frame."""
    data = path.read_bytes()
    tables, offset = [], 0
    while offset + HEADER.size <= len(data):
        magic, length = HEADER.unpack_from(data, offset)
        start, end = offset + HEADER.size, offset + HEADER.size + length
        if magic != MAGIC or end > len(data):
            break
        try:
            table = pa.ipc.open_stream(pa.py_buffer(data[start:end])).read_all()
            key = tuple(json.loads(table.schema.metadata[KEY_METADATA]))
        except (pa.ArrowInvalid, KeyError, ValueError, TypeError):
            break
        tables.append((key, table.replace_schema_metadata(None)))
        offset = end
    if offset < len(data):
        logger.warning(
            "Inference-log journal %s: the last %d bytes are an incomplete frame (a crash "
            "mid-write); the %d complete tables before them are replayed",
            path,
            len(data) - offset,
            len(tables),
        )
    return tables


def _try_lock(path: Path) -> Segment | None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND)
    except FileNotFoundError:  # deleted by its owner meanwhile
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if not path.exists():  # its owner deleted it between our open and our lock
        os.close(fd)
        return None
    return Segment(path, fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
