"""Real Airflow processes for integration tests: a temporary AIRFLOW_HOME, the CLI, an api-server, a scheduler.

:func:`airflow_home` migrates a throw-away SQLite metadata DB and serialises this repo's DAGs into it;
:meth:`AirflowHome.start` runs ``airflow api-server`` / ``scheduler`` / ``triggerer`` as subprocesses on a free
loopback port (SimpleAuthManager with every user an admin: the server adds the token itself), logging to files
in the home, stopped by :meth:`AirflowHome.stop_all`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
_AIRFLOW = [sys.executable, "-m", "airflow"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class AirflowHome:
    """One temporary Airflow installation: its environment, port and the processes started in it."""

    path: Path
    env: dict[str, str]
    port: int
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``airflow <args>`` in this home; raises with its output when ``check`` and it fails."""
        result = subprocess.run(
            [*_AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=timeout, cwd=self.path
        )
        if check and result.returncode != 0:
            command = " ".join(args)
            raise RuntimeError(f"airflow {command} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def start(self, name: str, *args: str) -> subprocess.Popen:
        """Start ``airflow <name> <args>`` in the background, its output in ``<home>/<name>.log``."""
        with (self.path / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen([*_AIRFLOW, name, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=self.path)
        self.processes[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.path / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_api_server(self, timeout: float = 180) -> None:
        """Start the api-server and wait until it answers its health check."""
        proc = self.start("api-server", "--port", str(self.port), "--host", "127.0.0.1", "--workers", "1")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"api-server exited with {proc.returncode}:\n{self.log('api-server')[-4000:]}")
            try:
                status, _ = self.request("GET", "/api/v2/monitor/health")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"api-server did not answer within {timeout:.0f} s:\n{self.log('api-server')[-4000:]}")

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One REST call; returns (status, parsed JSON body) for 2xx and 4xx alike."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, raw.decode(errors="replace")

    def stop_all(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.processes.clear()


def airflow_home(path: Path, **env: str) -> AirflowHome:
    """A migrated Airflow home at ``path`` with this repo's DAGs serialised; ``env`` adds/overrides variables."""
    path.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "LIGHTLY_"))}
    environment = {
        **base,
        "AIRFLOW_HOME": str(path),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{path}/airflow.db",
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "30",
        "AIRFLOW__CORE__PARALLELISM": "4",
        # a loaded CI machine answers slower than the 5 s default; a timed-out state change is not retried safely
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
        "LIGHTLY_HOME": str(path / "lightly"),
        "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO)]),
        **env,
    }
    home = AirflowHome(path=path, env=environment, port=port)
    home.cli("db", "migrate", timeout=300)
    home.cli("dags", "reserialize", timeout=300)
    return home
