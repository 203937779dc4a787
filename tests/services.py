"""Real services for the cluster tests, each started in a throwaway directory and stopped by its owner.

- ``Postgres``: Debian's PostgreSQL, initdb + pg_ctl on 127.0.0.1 and a free port (as the ``postgres`` user
  when the tests run as root, since PostgreSQL refuses to run as root).
- ``ServerProcess``: an ``mlflow server`` (or ``cluster/mlflow_server.sh``) in its own process group.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cluster.tracking import probe_server

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bindir() -> str | None:
    """Where initdb and pg_ctl are: on PATH, or Debian's /usr/lib/postgresql/<version>/bin (newest)."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return str(Path(initdb).resolve().parent)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return str(Path(found[-1]).parent) if found else None


class Postgres:
    """A throwaway PostgreSQL cluster; ``uri`` is a database ``mlflow`` on it (trust auth, loopback only)."""

    USER = "lslu"

    def __init__(self, bindir: str):
        self.bindir, self.port = bindir, free_port()
        self.root = Path(tempfile.mkdtemp(prefix="lslu-pg-"))  # under /tmp: the postgres user must reach it
        self.data, self.log = self.root / "data", self.root / "postgres.log"
        self.run_as = self._unprivileged_user() if os.geteuid() == 0 else None
        self.uri = f"postgresql://{self.USER}@127.0.0.1:{self.port}/mlflow"

    @staticmethod
    def _unprivileged_user() -> str:
        for name in ("postgres", "nobody"):
            try:
                pwd.getpwnam(name)
                return name
            except KeyError:
                continue
        raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")

    def _run(self, *args: str) -> None:
        cmd = [f"{self.bindir}/{args[0]}", *args[1:]]
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if out.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr or out.stdout}")

    def start(self) -> "Postgres":
        if self.run_as:
            shutil.chown(self.root, self.run_as)
        self._run("initdb", "-D", str(self.data), "-U", self.USER, "--auth=trust", "--no-sync", "-E", "UTF8")
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options, "start")
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.USER, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE DATABASE mlflow")
        return self

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class ServerProcess:
    """A long-running server command in its own process group, ready once ``probe_server(uri)`` passes."""

    def __init__(self, cmd: list[str], uri: str, log: Path, env: dict | None = None):
        self.cmd, self.uri, self.log, self.env = cmd, uri, log, env
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True, timeout_s: float = 240) -> "ServerProcess":
        env = {
            **os.environ,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            **(self.env or {}),
        }
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.log.parent, start_new_session=True
            )
        if wait:
            self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float = 240) -> None:
        deadline = time.monotonic() + timeout_s
        while probe_server(self.uri, timeout_s=5) is not None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.cmd[0]} exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.uri} not up after {timeout_s:.0f} s:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL to the whole group: the server dies as in a crash, mid-request if it was in one."""
        _reap_group(self.proc.pid)
        self.proc.wait(30)

    def stop(self) -> None:
        """SIGTERM to the whole group (uvicorn and its workers), SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(grace)
                break
            except subprocess.TimeoutExpired:
                continue
        _reap_group(self.proc.pid)


def _reap_group(pgid: int) -> None:
    """Children of the group that outlived its leader (uvicorn workers) get SIGKILL too."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def mlflow_server(store_uri: str, artifacts: Path, log: Path, port: int | None = None) -> ServerProcess:
    """``mlflow server`` itself, on any backend store (the outage test uses SQLite so it runs without PostgreSQL)."""
    port = port or free_port()
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        store_uri,
        "--serve-artifacts",
        "--artifacts-destination",
        str(artifacts),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    return ServerProcess(cmd, f"http://127.0.0.1:{port}", log)


def script_server(backend_uri: str, artifacts: Path, log: Path) -> ServerProcess:
    """``cluster/mlflow_server.sh`` as a user runs it, with this interpreter's mlflow."""
    port = free_port()
    env = {
        "MLFLOW_BACKEND_STORE_URI": backend_uri,
        "MLFLOW_ARTIFACTS_DESTINATION": str(artifacts),
        "MLFLOW_PORT": str(port),
        "MLFLOW_BIN": str(Path(sys.executable).parent / "mlflow"),
    }
    return ServerProcess(["bash", str(REPO / "cluster" / "mlflow_server.sh")], f"http://127.0.0.1:{port}", log, env)


class RayCluster:
    """``tests/cluster_ctl.py`` in its own process: a head (no CPUs) and worker nodes, driven by JSON lines."""

    def __init__(self, log: Path, workers: int = 2, worker_cpus: int = 1):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "tests" / "cluster_ctl.py"),
                "--workers",
                str(workers),
                "--worker-cpus",
                str(worker_cpus),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(log, "ab"),
            text=True,
            env=env,
            start_new_session=True,
        )
        self.log = log
        started = self._read()
        self.address, self.head, self.workers = started["address"], started["head"], list(started["workers"])

    def _read(self) -> dict:
        import json

        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the cluster process exited ({self.proc.poll()}):\n{self.log.read_text()[-3000:]}")
            if line.startswith("{"):  # Ray may print its own lines
                return json.loads(line)

    def _order(self, **order) -> dict:
        import json

        self.proc.stdin.write(json.dumps(order) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def remove(self, node_id: str) -> None:
        self._order(cmd="remove", node_id=node_id)
        self.workers.remove(node_id)

    def alive(self) -> list[str]:
        return self._order(cmd="alive")["alive"]

    def wait_alive(self, count: int, timeout_s: float = 60) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while len(alive := self.alive()) != count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(alive)} Ray nodes alive after {timeout_s:.0f} s, expected {count}")
            time.sleep(0.5)
        return alive

    def shutdown(self) -> None:
        if self.proc.poll() is None:
            try:
                self._order(cmd="shutdown")
                self.proc.wait(120)
            except (OSError, RuntimeError, subprocess.TimeoutExpired):
                self.proc.terminate()  # its SIGTERM handler shuts the cluster down
                try:
                    self.proc.wait(60)
                except subprocess.TimeoutExpired:
                    _reap_group(self.proc.pid)
