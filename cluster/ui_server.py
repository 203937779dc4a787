"""A local MLflow UI on a tracking store: ``mlflow ui`` on 127.0.0.1 with one worker, started and stopped cleanly.

    with UiServer("sqlite:///mlruns.db", port=5000) as ui:
        print(ui.url)          # serving once the context is entered

The server runs in its own process group, so stopping it stops every process it started; its
background-job runner (MLflow's GenAI jobs: a dozen worker processes that ignore SIGTERM) is switched off.
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

from cluster.local import QUIET_ENV

HOST = "127.0.0.1"
DEFAULT_PORT = 5000
SERVER_ENV = {**QUIET_ENV, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


class UiError(RuntimeError):
    """The UI could not start (port taken, server exited); the message says why."""


def port_is_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = HOST) -> int:
    """A port nothing listens on now (for tests and ``--port 0``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class UiServer:
    """``log``: the file the server writes to (default: a new ``lslu-sweep-mlflow-ui-*.log`` in the temp directory)."""

    def __init__(self, tracking_uri: str, port: int = DEFAULT_PORT, log: str | Path | None = None):
        self.tracking_uri, self.port = tracking_uri, port or free_port()
        self.log = Path(log) if log else None  # made in start(), once the port is known to be free
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            self.tracking_uri,
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]

    def start(self, timeout_s: float = 180.0) -> "UiServer":
        if not port_is_free(self.port):
            raise UiError(f"port {self.port} on {HOST} is in use (another MLflow UI?); choose another with --port")
        if self.log is None:
            fd, path = tempfile.mkstemp(prefix="lslu-sweep-mlflow-ui-", suffix=".log")
            os.close(fd)
            self.log = Path(path)
        env = {**os.environ, **{k: v for k, v in SERVER_ENV.items() if k not in os.environ}}
        with open(self.log, "ab") as log:  # the server's own output (every request) stays out of the console
            self.proc = subprocess.Popen(
                self.command(),
                env=env,
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while not self._healthy():
            if self.proc.poll() is not None:
                raise UiError(
                    f"mlflow ui exited with status {self.proc.returncode} before it served {self.url}; "
                    f"its log ({self.log}) ends:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise UiError(f"mlflow ui did not answer on {self.url} within {timeout_s:.0f} s; see {self.log}")
            time.sleep(0.5)
        return self

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait(self) -> int:
        return self.proc.wait()

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM to the server's process group; after ``timeout_s`` (or once it is quiet), SIGKILL to what is left."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and (self.proc.poll() is None or _group_alive(pgid)):
            time.sleep(0.2)
        _signal_group(pgid, signal.SIGKILL)  # whatever ignored SIGTERM
        self.proc.wait()
        self.proc = None

    def __enter__(self) -> "UiServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
