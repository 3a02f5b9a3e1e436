"""The spool: usage records of direct calls, on disk until Costr has them.

Each process appends to a JSON-lines file of its own (one record a line, fsynced), holding an
exclusive ``flock`` on it while it is open. A file nobody holds (its process exited, or rotated
it for delivery) can be claimed: locked and renamed ``*.sending`` by the one process that sends
it, deleted once Costr has stored it. A process that dies while sending releases its lock, so the
next one sends the file again; Costr's ingest API is idempotent by event id, so nothing is
stored twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

try:
    import fcntl
except ImportError:  # Windows: no flock; each process then sends only its own files.
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("costr_sdk")

PENDING = ".jsonl"
SENDING = ".sending"


def _lock(handle: BinaryIO) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


class Claimed:
    """A spool file this process holds for sending."""

    def __init__(self, path: Path, handle: BinaryIO) -> None:
        self.path, self.handle = path, handle

    def records(self) -> list[dict[str, Any]]:
        self.handle.seek(0)
        records = []
        for line in self.handle.read().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash mid-write: the rest of the file still counts
            if isinstance(record, dict):
                records.append(record)
        return records

    def done(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        self.release()

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.handle.close()


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._file: BinaryIO | None = None
        self._own: set[str] = set()  # names of files this process wrote (for Windows)

    def append(self, records: list[dict[str, Any]]) -> None:
        data = b"".join(
            json.dumps(r, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"
            for r in records
        )
        with self._lock:
            if self._file is None:
                self._file = self._open_new()
            self._file.write(data)
            self._file.flush()
            os.fsync(self._file.fileno())

    def _open_new(self) -> BinaryIO:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{PENDING}"
        handle = open(self.directory / name, "ab")  # noqa: SIM115 - held open while appending
        os.chmod(handle.fileno(), 0o600)
        _lock(handle)
        self._own.add(name)
        return handle

    def rotate(self) -> None:
        """Close this process's current file (releasing its lock) so it can be claimed."""
        with self._lock:
            if self._file is not None:
                with contextlib.suppress(OSError):
                    self._file.close()
                self._file = None

    def close(self) -> None:
        self.rotate()

    def _candidates(self) -> list[Path]:
        try:
            paths = [p for p in self.directory.iterdir() if p.suffix in (PENDING, SENDING)]
        except FileNotFoundError:
            return []
        if fcntl is None:
            paths = [p for p in paths if p.name.split(".", 1)[0] + PENDING in self._own]
        return sorted(paths)

    def pending(self) -> bool:
        with self._lock:
            if self._file is not None and self._file.tell() > 0:
                return True
        return bool(self._candidates())

    def claim(self) -> Iterator[Claimed]:
        """Every file nobody else holds, one at a time, locked and renamed for sending."""
        self.rotate()
        for path in self._candidates():
            try:
                handle = open(path, "r+b")  # noqa: SIM115 - closed by Claimed
            except OSError:
                continue
            if not _lock(handle) or not self._same_file(path, handle):
                handle.close()
                continue
            target = path if path.suffix == SENDING else path.with_suffix(SENDING)
            try:
                if target != path:
                    path.rename(target)
            except OSError:
                handle.close()
                continue
            yield Claimed(target, handle)

    @staticmethod
    def _same_file(path: Path, handle: BinaryIO) -> bool:
        """The path still names the file locked (another process may have renamed or removed
        it between the listing and the lock)."""
        try:
            return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except OSError:
            return False
