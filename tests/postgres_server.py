"""Pytest plugin: a real PostgreSQL server for the test session, on a free port of 127.0.0.1.

The server binaries come from the `pgserver` wheel (it bundles PostgreSQL), falling back to Debian's
`postgresql` package (/usr/lib/postgresql/*/bin) or a `pg_ctl` on PATH. PostgreSQL refuses to run as root,
so under root the server runs as the unprivileged user `nobody`. The data directory is a fresh temporary
directory, removed with the server at the end of the session.

If the server cannot be started the tests that need it fail with the reason; set LIGHTLY_SKIP_POSTGRES=1
to skip them instead. Register with ``pytest_plugins = ["tests.postgres_server"]`` in tests/conftest.py
or ``-p tests.postgres_server``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

SKIP_ENV = "LIGHTLY_SKIP_POSTGRES"
UNPRIVILEGED_USER = "nobody"
_START_ATTEMPTS = 3

# pgserver logs from an atexit hook, after pytest has closed the streams that the logging handlers write to
# ("--- Logging error --- ValueError: I/O operation on closed file" at the end of every run).
logging.getLogger("pgserver").propagate = False


@dataclass
class _Server:
    bindir: Path
    datadir: Path
    port: int
    run_as: pwd.struct_passwd | None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"


def _version_key(path: Path) -> tuple[int, ...]:
    """Sort key for /usr/lib/postgresql/<version>/bin, newest first after reverse sorting."""
    return tuple(int(part) for part in path.parent.name.split(".") if part.isdigit())


def _user_kwargs(run_as: pwd.struct_passwd | None) -> dict:
    """subprocess arguments that run a program as `run_as` (None: as the current user)."""
    if run_as is None:
        return {}
    return {"user": run_as.pw_uid, "group": run_as.pw_gid, "extra_groups": []}


def _runs_as(bindir: Path, run_as: pwd.struct_passwd | None) -> bool:
    """Whether the server user can execute this directory's postgres (a root-only venv path cannot)."""
    try:
        probe = subprocess.run(
            [str(bindir / "postgres"), "--version"],
            capture_output=True,
            timeout=30,
            check=False,
            cwd="/",
            **_user_kwargs(run_as),
        )
    except OSError:
        return False
    return probe.returncode == 0


def find_postgres_bindir(run_as: pwd.struct_passwd | None = None) -> Path | None:
    """Directory with initdb, pg_ctl and postgres usable by `run_as`: pgserver's, then Debian's, then PATH."""
    candidates: list[Path] = []
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(loc) / "pginstall" / "bin" for loc in spec.submodule_search_locations]
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for bindir in candidates:
        if all((bindir / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres")) and _runs_as(
            bindir, run_as
        ):
            return bindir
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(server: _Server, *args: str, timeout: float = 60) -> None:
    """Run a PostgreSQL program as the server's user; raise with its output if it fails."""
    proc = subprocess.run(
        [str(server.bindir / args[0]), *args[1:]],
        cwd=server.datadir.parent,
        env={**os.environ, "LC_ALL": "C", "LANG": "C"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
        **_user_kwargs(server.run_as),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} exited with {proc.returncode}:\n{proc.stdout.strip()}")


def _log_tail(server: _Server, lines: int = 30) -> str:
    log = server.datadir.parent / "server.log"
    if not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def start_postgres() -> _Server:
    """initdb a temporary cluster and start it on a free loopback port; the caller must stop_postgres()."""
    run_as = pwd.getpwnam(UNPRIVILEGED_USER) if os.geteuid() == 0 else None
    bindir = find_postgres_bindir(run_as)
    if bindir is None:
        who = f" that user {UNPRIVILEGED_USER!r} can run" if run_as else ""
        raise RuntimeError(
            f"no PostgreSQL binaries found{who}: install the dev requirements (pgserver bundles them) "
            "or `apt-get install -y postgresql`"
        )
    workdir = Path(tempfile.mkdtemp(prefix="lightly-pg-"))
    if run_as is not None:
        os.chown(workdir, run_as.pw_uid, run_as.pw_gid)
    server = _Server(bindir=bindir, datadir=workdir / "data", port=0, run_as=run_as)
    try:
        _run(
            server,
            "initdb",
            "-D",
            str(server.datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        )
        for attempt in range(1, _START_ATTEMPTS + 1):
            server.port = _free_port()
            options = f"-h 127.0.0.1 -p {server.port} -k '' -F -c full_page_writes=off -c max_connections=200"
            try:
                _run(
                    server,
                    "pg_ctl",
                    "-D",
                    str(server.datadir),
                    "-l",
                    str(workdir / "server.log"),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "30",
                    "start",
                )
                return server
            except RuntimeError as exc:
                if attempt == _START_ATTEMPTS:
                    raise RuntimeError(f"{exc}\nserver log:\n{_log_tail(server)}") from None
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    raise AssertionError("unreachable")


def stop_postgres(server: _Server) -> None:
    """Stop the server (fast shutdown) and delete its data directory."""
    try:
        _run(server, "pg_ctl", "-D", str(server.datadir), "-m", "fast", "-w", "-t", "30", "stop")
    finally:
        shutil.rmtree(server.datadir.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of the session's PostgreSQL server (superuser `postgres`, database `postgres`)."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: asked to run without the PostgreSQL server (the SQLite legs still run)")
    server: _Server | None = None
    try:
        server = start_postgres()
    except Exception as exc:
        failure = str(exc)
    if server is None:
        pytest.fail(
            f"could not start the PostgreSQL test server: {failure}\n(set {SKIP_ENV}=1 to skip these tests)",
            pytrace=False,
        )
    try:
        yield server.url
    finally:
        stop_postgres(server)


@pytest.fixture
def postgres_database_url(postgres_url: str) -> Iterator[str]:
    """URL of a fresh, empty database on the session's server, dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield sa.make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()
