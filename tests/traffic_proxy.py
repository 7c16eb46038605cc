"""A byte-counting, fault-injecting HTTP/1.1 proxy in front of a loopback S3 emulator.

Every request and response passes through unchanged and is recorded with its method, bucket, key, status and
the bytes that crossed the socket each way. Tests and the traffic benchmark use it to measure what really went
over the network, independently of the pipeline's own byte counters. Faults (an S3 error response, a reset
connection, a response cut off mid-body) can be injected for matching requests to exercise retries and error
messages. Buckets and keys are told apart by the upstream's URL style: path-style S3 (what botocore uses for an
``http://127.0.0.1:PORT`` endpoint; the default), the GCS JSON API (``style="gcs"``) or path-style Azure Blob
(``style="azure"``, ``/account/container/blob`` as Azurite serves it).
"""

from __future__ import annotations

import functools
import json
import socket
import socketserver
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import parse_qsl, unquote, urlsplit

_NO_BODY_STATUSES = frozenset({204, 304})


@dataclass(frozen=True)
class Exchange:
    """One request/response pair as it crossed the proxy; byte counts include HTTP framing."""

    method: str
    bucket: str
    key: str
    query: str
    status: int
    request_bytes: int
    response_head_bytes: int
    response_body_bytes: int
    byte_range: str = ""

    @property
    def response_bytes(self) -> int:
        return self.response_head_bytes + self.response_body_bytes

    @property
    def is_object_get(self) -> bool:
        """A GET of one object's bytes (not a listing or another bucket-level call)."""
        return self.method == "GET" and bool(self.key)


@dataclass
class Fault:
    """Answer matching requests with a failure instead of forwarding them.

    ``kind``: ``"status"`` sends an S3 error document with ``status`` and ``code``; ``"reset"`` drops the
    connection with a TCP reset before answering; ``"truncate"`` forwards the response but resets the
    connection after ``keep_bytes`` bytes of its body. ``times`` is how many requests it hits (None: all).
    """

    kind: str = "status"
    method: str | None = None
    bucket: str | None = None
    key_contains: str | None = None
    status: int = 503
    code: str = "SlowDown"
    keep_bytes: int = 0
    times: int | None = 1

    def matches(self, method: str, bucket: str, key: str) -> bool:
        return (
            (self.times is None or self.times > 0)
            and (self.method is None or self.method == method)
            and (self.bucket is None or self.bucket == bucket)
            and (self.key_contains is None or self.key_contains in key)
        )


class TrafficProxy:
    """Forward ``127.0.0.1:<port>`` to ``upstream`` and record every exchange; use as a context manager."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1", style: str = "s3") -> None:
        if style not in _ADDRESS_STYLES:
            raise ValueError(f"unknown address style {style!r}; one of {sorted(_ADDRESS_STYLES)}")
        self.upstream = (upstream_host, upstream_port)
        self.style = style
        self._exchanges: list[Exchange] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve_connection(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="traffic-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TrafficProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> TrafficProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def exchanges(self, bucket: str | None = None) -> list[Exchange]:
        """The recorded exchanges so far (optionally of one bucket), oldest first."""
        with self._lock:
            return [e for e in self._exchanges if bucket is None or e.bucket == bucket]

    def reset(self) -> None:
        """Forget the recorded exchanges (faults stay)."""
        with self._lock:
            self._exchanges.clear()

    def add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, method: str, bucket: str, key: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, bucket, key):
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    def _record(self, exchange: Exchange) -> None:
        with self._lock:
            self._exchanges.append(exchange)

    def _serve_connection(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        upstream_file: BinaryIO | None = None
        client_file = client.makefile("rb")
        try:
            while True:
                head = _read_head(client_file)
                if not head:
                    return
                method, target, headers = _parse_head(head)
                bucket, key, query = _ADDRESS_STYLES[self.style](target)
                byte_range = headers.get("range", "")
                exchange = functools.partial(Exchange, method, bucket, key, query, byte_range=byte_range)
                if headers.get("expect", "").lower() == "100-continue":
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                    head = _without_header(head, b"expect")
                request = head + _read_body(client_file, headers)
                fault = self._take_fault(method, bucket, key)
                # Each exchange is recorded before its answer goes out, so a client never sees a response
                # that the record does not hold yet.
                if fault is not None and fault.kind == "reset":
                    self._record(exchange(0, len(request), 0, 0))
                    _reset(client)
                    return
                if fault is not None and fault.kind == "status":
                    error_head, error_body = _error_response(fault.status, fault.code, bucket, key, self.style)
                    error_body = b"" if method == "HEAD" else error_body
                    self._record(exchange(fault.status, len(request), len(error_head), len(error_body)))
                    client.sendall(error_head + error_body)
                    continue
                if upstream is None:
                    upstream = socket.create_connection(self.upstream)
                    upstream_file = upstream.makefile("rb")
                upstream.sendall(request)
                response_head = _read_head(upstream_file)
                while response_head and 100 <= _status(response_head) < 200:
                    response_head = _read_head(upstream_file)
                if not response_head:
                    return
                status = _status(response_head)
                response_headers = _parse_head(response_head)[2]
                if method == "HEAD" or status in _NO_BODY_STATUSES:
                    body = b""
                else:
                    body = _read_body(upstream_file, response_headers, until_eof=True)
                if fault is not None and fault.kind == "truncate":
                    body = body[: fault.keep_bytes]
                self._record(exchange(status, len(request), len(response_head), len(body)))
                client.sendall(response_head + body)
                if fault is not None and fault.kind == "truncate":
                    _reset(client)
                    return
                if response_headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, OSError):
            return
        finally:
            if upstream is not None:
                upstream.close()
            client_file.close()
            try:
                client.close()
            except OSError:
                pass


def _read_head(stream: BinaryIO) -> bytes:
    """The start line and headers up to the blank line; b"" at end of stream."""
    lines = []
    while True:
        line = stream.readline(65537)
        if not line:
            return b""
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            if len(lines) == 1:  # tolerate a stray CRLF between messages
                lines.clear()
                continue
            return b"".join(lines)


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """(method or version, target or status, lower-cased headers) of a request or response head."""
    start, *rest = head.decode("latin-1").split("\r\n")
    parts = start.split(" ", 2)
    headers: dict[str, str] = {}
    for line in rest:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1] if len(parts) > 1 else "", headers


def _status(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


def _without_header(head: bytes, name: bytes) -> bytes:
    lines = head.split(b"\r\n")
    kept = [line for line in lines if line.split(b":", 1)[0].strip().lower() != name]
    return b"\r\n".join(kept)


def _read_body(stream: BinaryIO, headers: dict[str, str], *, until_eof: bool = False) -> bytes:
    """The raw body bytes (chunk framing included) as announced by the headers."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return b"".join(_read_chunked(stream))
    if "content-length" in headers:
        return _read_exactly(stream, int(headers["content-length"]))
    return stream.read() if until_eof else b""


def _read_chunked(stream: BinaryIO) -> Iterable[bytes]:
    while True:
        line = stream.readline()
        yield line
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while True:
                trailer = stream.readline()
                yield trailer
                if trailer in (b"\r\n", b"\n", b""):
                    return
        yield _read_exactly(stream, size + 2)


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise ConnectionError(f"stream ended after {len(data)} of {n} bytes")
    return data


def _bucket_key(target: str) -> tuple[str, str, str]:
    parts = urlsplit(target)
    bucket, _, key = unquote(parts.path).lstrip("/").partition("/")
    return bucket, key, parts.query


def _gcs_bucket_key(target: str) -> tuple[str, str, str]:
    """GCS JSON API: ``[/download|/upload]/storage/v1/b/BUCKET[/o[/KEY]]``; an upload's key is its ``name``."""
    parts = urlsplit(target)
    path = unquote(parts.path)
    for lead in ("/download", "/upload"):
        path = path.removeprefix(lead)
    rest = path.removeprefix("/storage/v1/b/")
    bucket, _, objects = rest.partition("/")
    key = objects.removeprefix("o").removeprefix("/")
    if not key:
        key = dict(parse_qsl(parts.query)).get("name", "")
    return bucket, key, parts.query


def _azure_bucket_key(target: str) -> tuple[str, str, str]:
    """Path-style Azure Blob: ``/ACCOUNT/CONTAINER[/BLOB]``."""
    parts = urlsplit(target)
    _account, _, rest = unquote(parts.path).lstrip("/").partition("/")
    container, _, blob = rest.partition("/")
    return container, blob, parts.query


_ADDRESS_STYLES = {"s3": _bucket_key, "gcs": _gcs_bucket_key, "azure": _azure_bucket_key}


def _error_response(status: int, code: str, bucket: str, key: str, style: str = "s3") -> tuple[bytes, bytes]:
    """Head and body of an error document in the upstream's style (the head announces the body even for HEAD)."""
    if style == "gcs":
        body = json.dumps({"error": {"code": status, "message": f"{code}: injected by the test proxy"}}).encode()
        head = (
            f"HTTP/1.1 {status} {code}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        return head, body
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>injected by the test proxy</Message>"
        f"<BucketName>{bucket}</BucketName><Key>{key}</Key><RequestId>proxy</RequestId></Error>"
    ).encode()
    head = (
        f"HTTP/1.1 {status} {code}\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
        f"x-amz-request-id: proxy\r\nx-ms-error-code: {code}\r\n\r\n"
    ).encode()
    return head, body


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a dropped connection looks to the client."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()
