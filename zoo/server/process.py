"""A server in a subprocess, for tests and benchmarks: started, waited for, and stopped.

:class:`ServerProcess` runs ``python -m zoo.server ... --port`` in its own process group,
waits until ``/health`` answers, and on exit asks it to stop (SIGTERM: requests in flight get
its ``--shutdown_timeout``, :func:`zoo.server.run_server`) and kills whatever of that group is
left after a short grace.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from typing_extensions import Self


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``python -m zoo.server <args> --port <port>`` as a context manager.

    Args:
        args: the command line of ``zoo.server`` (without ``--port``).
        api_key: the server's key, to ask ``/health`` with.
        cwd: where to run (default: the repository holding this file).
        startup_timeout: seconds to wait for ``/health``.
        env: extra environment variables.
    """

    def __init__(
        self,
        args: list[str],
        api_key: str | None = None,
        cwd: str | Path | None = None,
        startup_timeout: float = 300.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.args = [sys.executable, "-m", "zoo.server", *args, "--port", str(self.port)]
        self.api_key = api_key
        self.cwd = Path(cwd) if cwd is not None else Path(__file__).resolve().parents[2]
        self.startup_timeout = startup_timeout
        self.env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
        self.log = Path(tempfile.mkstemp(prefix="ftzoo-server-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server and wait until it answers ``/health``.

        Raises:
            RuntimeError: it exited or did not become ready in time (with the end of its log).
        """
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the server's process, in a process group of its own; do not wait for it."""
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.args, cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_ready(self) -> None:
        """Wait until the launched server answers ``/health``.

        Raises:
            RuntimeError: it exited or did not become ready in time (with the end of its log).
        """
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"the server exited with code {self.proc.returncode}:\n{tail}")
            if self._healthy():
                return
            time.sleep(0.25)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"the server was not ready after {self.startup_timeout:g} s:\n{tail}")

    def _healthy(self) -> bool:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(f"{self.url}/health", headers=headers), timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self, timeout: float = 15.0) -> None:
        """Ask the server to stop (SIGTERM: requests in flight get its ``--shutdown_timeout``), give
        it ``timeout`` seconds, then kill what is left of its process group; delete the log."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group this server leads: its workers, if any are left
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.log.unlink(missing_ok=True)

    def processes(self) -> list[int]:
        """The running processes of the server's process group (Linux: read from ``/proc``)."""
        if self.proc is None:
            return []
        return [pid for pid in _pids() if _group(pid) == self.proc.pid and _state(pid) not in ("Z", "X", None)]

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's output (until :meth:`stop`)."""
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _state(pid: int) -> str | None:
    """The state letter of ``/proc/<pid>/stat`` (``Z``: a zombie, dead and not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]
