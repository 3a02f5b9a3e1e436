"""Starting, watching and stopping the benchmark's processes, and reading their /proc figures."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Processes:
    """Children started in their own session, so each is stopped with its whole group."""

    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen]] = []

    def start(
        self, name: str, argv: list[str], *, env: dict, cwd: Path, log: Path, cpus: set[int] | None
    ) -> subprocess.Popen:
        def pin() -> None:
            # Die with the benchmark even if it is killed outright (prctl PR_SET_PDEATHSIG).
            with contextlib.suppress(Exception):
                ctypes.CDLL(None).prctl(1, signal.SIGTERM)
            if cpus:
                os.sched_setaffinity(0, cpus)

        handle = log.open("wb")
        proc = subprocess.Popen(  # noqa: S603 -- our own interpreter and modules
            argv,
            env=env,
            cwd=cwd,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=pin,
        )
        handle.close()
        self.children.append((name, proc))
        return proc

    def check_alive(self) -> None:
        for name, proc in self.children:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited early with status {proc.returncode}")

    def stop_all(self, timeout: float = 10.0) -> None:
        for _, proc in reversed(self.children):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for _, proc in reversed(self.children):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            # Anything left in the group (the gunicorn worker, uvicorn children) goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(2)
        self.children.clear()


def wait_http(url: str, timeout: float, procs: Processes) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 -- local URL
                if response.status < 500:
                    return
        except urllib.error.HTTPError as error:
            if error.code < 500:
                return
            last = error
        except OSError as error:
            last = error
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s: {last!r}")


def children_of(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


@dataclass
class CpuSample:
    process: float  # utime+stime of every thread, living or exited (10 ms resolution)
    main_thread: float  # the event-loop thread's time on CPU (schedstat: nanosecond resolution)
    threads: float  # every living thread's time on CPU (schedstat)

    def __sub__(self, other: CpuSample) -> CpuSample:
        return CpuSample(
            self.process - other.process,
            self.main_thread - other.main_thread,
            self.threads - other.threads,
        )


def _schedstat(path: Path) -> float:
    try:
        return int(path.read_text().split()[0]) / 1e9
    except (FileNotFoundError, ProcessLookupError):
        return 0.0


def cpu_sample(pid: int) -> CpuSample:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    process = (int(fields[11]) + int(fields[12])) / CLK_TCK
    main = _schedstat(Path(f"/proc/{pid}/task/{pid}/schedstat"))
    threads = sum(_schedstat(t / "schedstat") for t in Path(f"/proc/{pid}/task").iterdir())
    return CpuSample(process, main, threads)


def settle_cpu(pid: int, quiet: float = 0.25, windows: int = 3, limit: float = 8.0) -> CpuSample:
    """Wait until the process stops using CPU (its usage writer has caught up), then sample.

    Quiet means under 2 ms of CPU in each of ``windows`` windows in a row, so that a writer
    which waits a little to gather a batch is still counted in the phase that caused it.
    """
    deadline = time.monotonic() + limit
    previous = cpu_sample(pid)
    calm = 0
    while time.monotonic() < deadline:
        time.sleep(quiet)
        current = cpu_sample(pid)
        calm = calm + 1 if current.threads - previous.threads < 0.002 else 0
        previous = current
        if calm >= windows:
            break
    return previous


_SYS_PIDFD_GETFD = 438  # the same number on every Linux architecture


def tcp_nodelay(pid: int, local_port: int, remote_port: int) -> dict[str, list[bool]]:
    """TCP_NODELAY of each established TCP socket of ``pid``.

    ``accepted``: sockets whose local port is ``local_port`` (clients of the server);
    ``upstream``: sockets whose remote port is ``remote_port``. Each socket is borrowed with
    pidfd_getfd(2) (root or ptrace rights needed) and asked with getsockopt; an empty result
    means the check could not be made.
    """
    found: dict[str, list[bool]] = {"accepted": [], "upstream": []}
    inodes: dict[str, str] = {}
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                if state != "01":  # ESTABLISHED
                    continue
                if int(local.rsplit(":", 1)[1], 16) == local_port:
                    inodes[inode] = "accepted"
                elif int(remote.rsplit(":", 1)[1], 16) == remote_port:
                    inodes[inode] = "upstream"
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return found
    try:
        for fd_path in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd_path)
            except OSError:
                continue
            if not target.startswith("socket:["):
                continue
            kind = inodes.get(target[8:-1])
            if kind is None:
                continue
            fd = libc.syscall(_SYS_PIDFD_GETFD, pidfd, int(fd_path.name), 0)
            if fd < 0:
                continue
            try:
                with socket.socket(fileno=os.dup(fd)) as sock:
                    on = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                found[kind].append(bool(on))
            finally:
                os.close(fd)
    finally:
        os.close(pidfd)
    return found


def memory(pid: int) -> dict[str, int]:
    """VmHWM (peak resident) and VmRSS in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            values[name] = int(rest.split()[0])
    return values
