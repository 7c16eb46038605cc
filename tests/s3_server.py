"""Pytest plugin: a real S3 API (moto in server mode) on a free loopback port, behind a byte-counting proxy.

The session fixture ``s3`` starts ``moto_server`` on 127.0.0.1, waits until it answers, puts a
:class:`~tests.traffic_proxy.TrafficProxy` in front of it and points the Airflow connection ``aws_default``
at the proxy (``AIRFLOW_CONN_AWS_DEFAULT`` in JSON form: dummy keys, ``endpoint_url`` and ``region_name`` in
the extras), so every byte the pipeline moves is recorded. Its secret key is distinctive, so tests can grep
logs, XCom and reports for it. The server is stopped at the end of the session.

Register with ``pytest_plugins = ["tests.s3_server"]`` in tests/conftest.py. ``bench/traffic.py`` uses
:func:`s3_emulator` directly.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.traffic_proxy import TrafficProxy

ACCESS_KEY_ID = "AKIALIGHTLYTESTKEY01"
REGION = "us-east-1"
_READY_TIMEOUT_S = 30.0
_START_ATTEMPTS = 3


@dataclass
class S3Emulator:
    """A running moto server, the proxy in front of it and the credentials the test connections use."""

    moto_port: int
    proxy: TrafficProxy
    secret: str

    @property
    def direct_url(self) -> str:
        """moto itself: for set-up uploads that must not show up in the proxy's counts."""
        return f"http://127.0.0.1:{self.moto_port}"

    @property
    def endpoint_url(self) -> str:
        """The proxy: what the Airflow connections point at."""
        return self.proxy.url

    def client(self, *, through_proxy: bool = False) -> Any:
        """A boto3 S3 client on moto (or on the proxy)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url if through_proxy else self.direct_url,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=self.secret,
            region_name=REGION,
        )

    def new_bucket(self, stem: str = "bucket") -> str:
        """Create a bucket with a unique name (moto keeps state for the whole session) and return it."""
        name = f"{stem}-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        return name

    def upload_folder(
        self, folder: Path, bucket: str, prefix: str = "", keys: Iterable[str] | None = None
    ) -> int:
        """Upload the files below ``folder`` (or only ``keys`` of it) straight to moto; returns bytes sent."""
        client = self.client()
        relative = list(keys) if keys is not None else [
            p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()
        ]

        def put(key: str) -> int:
            body = (folder / key).read_bytes()
            client.put_object(Bucket=bucket, Key=prefix + key, Body=body)
            return len(body)

        with ThreadPoolExecutor(8) as pool:
            return sum(pool.map(put, relative))

    def connection_json(self, *, secret: str | None = None, **extra: Any) -> str:
        """An Airflow connection (JSON form) on the proxy; ``extra`` adds to endpoint_url and region_name."""
        return json.dumps(
            {
                "conn_type": "aws",
                "login": ACCESS_KEY_ID,
                "password": secret or self.secret,
                "extra": {"endpoint_url": self.endpoint_url, "region_name": REGION, **extra},
            }
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _moto_server_command() -> list[str]:
    beside = Path(sys.executable).parent / "moto_server"
    binary = str(beside) if beside.exists() else shutil.which("moto_server")
    if binary is None:
        raise RuntimeError("moto_server not found: install the dev requirements (moto[server])")
    return [binary]


def _wait_ready(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = log.read_text(errors="replace")
            raise RuntimeError(f"moto_server exited with {proc.returncode}:\n{output}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/data.json", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not answer on port {port} within {_READY_TIMEOUT_S:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def moto_server() -> Iterator[int]:
    """Run ``moto_server`` on a free loopback port until the block ends; yields the port."""
    workdir = Path(tempfile.mkdtemp(prefix="lightly-moto-"))
    log = workdir / "moto.log"
    proc: subprocess.Popen | None = None
    try:
        for attempt in range(1, _START_ATTEMPTS + 1):
            port = _free_port()
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [*_moto_server_command(), "-H", "127.0.0.1", "-p", str(port)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            try:
                _wait_ready(proc, port, log)
                break
            except RuntimeError:
                _stop(proc)
                if attempt == _START_ATTEMPTS:
                    raise
        yield port
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def s3_emulator() -> Iterator[S3Emulator]:
    """moto plus the counting proxy in front of it, both stopped when the block ends."""
    with moto_server() as port, TrafficProxy(port) as proxy:
        yield S3Emulator(moto_port=port, proxy=proxy, secret=f"lightly-test-secret-{uuid.uuid4().hex}")


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Emulator]:
    """The session's S3 emulator; ``aws_default`` points at its proxy while the session runs."""
    with s3_emulator() as emulator:
        previous = os.environ.get("AIRFLOW_CONN_AWS_DEFAULT")
        os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = emulator.connection_json()
        try:
            yield emulator
        finally:
            if previous is None:
                os.environ.pop("AIRFLOW_CONN_AWS_DEFAULT", None)
            else:
                os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = previous
