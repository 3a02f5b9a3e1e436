"""The local spool: where a web process keeps stream entries while Redis does not answer.

A spool is a directory of append-only JSON-lines files, one line per stream entry (a batch of
records). Each process writes its own file (``usage-<host>-<pid>-<random>-<n>.jsonl``), starting a
new one past ``segment_bytes``, and holds an exclusive ``flock`` on the file it is appending to.
The kernel drops that lock when the process dies, however it dies, so "a file nobody has locked"
means "a file nobody is writing": its owner rotated away from it or is dead. Any process may
replay such a file into the stream (lock, send every line, delete) — the owner once Redis
answers again, the next web process on the host when it starts, or the usage writer when it
starts; whoever takes the lock first does it, the others skip the file.

Durability: every append is one ``write`` of whole lines followed by ``fsync``, so a batch the
sink counted as handed over survives the process being killed and the machine losing power. That
is at most one fsync per batch (the sink batches for 0.2 s or 500 records) and happens only
while Redis is unreachable.

Replay is at least once: a replay cut short by Redis failing again sends the file again later.
Events are stored once anyway (unique request id); refusal counts of that entry could count
twice, which is the one place a duplicate can show.
"""

import fcntl
import json
import logging
import os
import secrets
import socket
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger("costr.usage.spool")

SUFFIX = ".jsonl"
# Lines sent to Redis per round trip during a replay.
REPLAY_CHUNK = 100


class Spool:
    """One process's spool files in ``directory``. Used from one thread (the sink's)."""

    def __init__(self, directory: str | Path, *, segment_bytes: int = 64 * 1024 * 1024) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self._prefix = f"usage-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self._sequence = 0
        self._fd: int | None = None
        self._size = 0
        # True from the first append until a replay of this directory has emptied it.
        self.pending = False

    def append(self, entries: list[dict[str, str]]) -> None:
        """Add stream entries to the current file, durably (fsync) before returning."""
        data = "".join(json.dumps(entry, separators=(",", ":")) + "\n" for entry in entries)
        payload = data.encode()
        if self._fd is None or self._size >= self.segment_bytes:
            self._open_next()
        view = memoryview(payload)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)
        self._size += len(payload)
        self.pending = True

    def close(self) -> None:
        """Close the current file, releasing its lock: it becomes replayable by anyone."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
            self._size = 0

    def replay(self, send: Callable[[list[dict[str, str]]], None]) -> int:
        """Send every unlocked spool file of the directory, this process's own included; return
        the number of entries sent. ``send`` raising (Redis gone again) stops the replay and
        leaves the remaining files in place."""
        self.close()
        sent = replay_directory(self.directory, send)
        self.pending = any(self.directory.glob(f"{self._prefix}-*{SUFFIX}"))
        return sent

    def _open_next(self) -> None:
        self.close()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._sequence += 1
        path = self.directory / f"{self._prefix}-{self._sequence:06d}{SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._fd = fd
        self._size = 0


def replay_directory(directory: str | Path, send: Callable[[list[dict[str, str]]], None]) -> int:
    """Send the entries of every spool file in ``directory`` that no process holds, oldest first,
    deleting each file once all of its lines were sent. Returns the number of entries sent."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    sent = 0
    for path in sorted(directory.glob(f"usage-*{SUFFIX}"), key=_age):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # replayed and deleted by another process meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its owner is appending to it, or another process is replaying it
            if os.fstat(fd).st_nlink == 0:
                continue  # another replayer finished it between our open and our lock
            with os.fdopen(os.dup(fd), "rb") as handle:
                lines = handle.read().splitlines()
            sent += _send_lines(path, lines, send)
            path.unlink()
        finally:
            os.close(fd)
    return sent


def _send_lines(path: Path, lines: list[bytes], send) -> int:
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict):
                raise ValueError("not a JSON object")
        except ValueError:
            # Only a torn last line (power lost mid-append, before its fsync) can look like this;
            # its batch was never counted as handed over. Kept in the log, not silently dropped.
            logger.error("unreadable line %d of spool file %s skipped: %r", number, path, line)
            continue
        entries.append({str(k): str(v) for k, v in entry.items()})
    for start in range(0, len(entries), REPLAY_CHUNK):
        send(entries[start : start + REPLAY_CHUNK])
    if entries:
        logger.info("replayed %d spooled usage entries from %s", len(entries), path.name)
    return len(entries)


def _age(path: Path) -> tuple[float, str]:
    """Oldest first; a process's own files, which may share a coarse mtime, in sequence order."""
    try:
        return path.stat().st_mtime, path.name
    except FileNotFoundError:
        return 0.0, path.name
